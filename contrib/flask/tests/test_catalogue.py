"""The bell's texts (issue 14, SPEC section 7): the shared catalogue, Hebrew by default, the
app's choice of locale (a setting or a callable per business) and its overrides."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from conftest import CATALOGUE_SOURCE, EN, HE, down
from wa_status_backend import Catalogue, Reminder, ReminderInfo, load_catalogue

# The original texts, written out here as the issue gives them, so a change to the catalogue
# that loses them is caught even if the two files are changed together.
ORIGINAL_TITLE = "חיבור הווטסאפ נותק"
ORIGINAL_NOTE = "חיבור הווטסאפ לעסק נותק. יש להיכנס להגדרות ווטסאפ ולחבר מחדש את המספר."
ORIGINAL_BELL = "חיבור הווטסאפ לעסק נותק – יש להתחבר מחדש במסך ההגדרות"


def test_the_package_carries_the_shared_catalogue_unchanged():
    installed = load_catalogue()
    import json

    assert installed == json.loads(CATALOGUE_SOURCE.read_text(encoding="utf-8"))
    assert installed["he"] == {"title": ORIGINAL_TITLE, "note": ORIGINAL_NOTE, "bell": ORIGINAL_BELL}
    assert set(installed) >= {"he", "en"}
    assert list(installed)[0] == "he"


def test_hebrew_is_the_default(kit):
    c = Catalogue()
    assert c.default_locale == "he"
    t = c.texts("he")
    assert (t.title, t.note, t.lang) == (ORIGINAL_TITLE, ORIGINAL_NOTE, "he")


def test_a_locale_setting_applies_to_every_business(make_kit):
    kit = make_kit(locale="en")
    kit.post(down("business_1"))
    [r] = kit.reminders("b1")
    assert (r["title"], r["note"], r["lang"]) == (EN["title"], EN["note"], "en")


def test_the_locale_setting_from_app_config(make_kit):
    kit = make_kit(locale=None)  # no argument: app.config["WA_STATUS_LOCALE"], else "he"
    kit.post(down("business_2"))
    assert kit.reminders("b2")[0]["lang"] == "he"


def test_a_locale_callable_per_business(kit):
    kit.post(down("business_1"))
    kit.post(down("business_2"))
    assert [(r["tenant_id"], r["lang"], r["title"]) for r in kit.reminders()] == [
        ("b1", "he", HE["title"]), ("b2", "en", EN["title"])]


@pytest.mark.parametrize("broken", ["fr", "", 42, "raise"])
def test_a_broken_locale_callable_falls_back_to_hebrew_and_the_reminder_is_made(make_kit, broken, caplog):
    def locale(business_id):
        if broken == "raise":
            raise RuntimeError("the locale lookup failed")
        return broken

    kit = make_kit(locale=locale)
    assert kit.post(down("business_1")).status_code == 200
    [r] = kit.reminders()
    assert (r["title"], r["lang"]) == (ORIGINAL_TITLE, "he")
    assert caplog.records  # the app hears about it


def test_overrides_per_text_and_per_locale(make_kit):
    kit = make_kit(texts={"he": {"note": "נא לחבר מחדש"}, "en": {"title": "WhatsApp offline"}})
    kit.post(down("business_1"))
    kit.post(down("business_2"))
    [r1], [r2] = kit.reminders("b1"), kit.reminders("b2")
    assert (r1["title"], r1["note"]) == (ORIGINAL_TITLE, "נא לחבר מחדש")
    assert (r2["title"], r2["note"]) == ("WhatsApp offline", EN["note"])


def test_a_new_locale_needs_both_texts_and_can_be_the_default(make_kit):
    kit = make_kit(locale="ar", texts={"ar": {"title": "انقطع اتصال واتساب", "note": "أعد الربط من الإعدادات"}})
    kit.post(down("business_1"))
    r = kit.reminders()[0]
    assert (r["title"], r["lang"]) == ("انقطع اتصال واتساب", "ar")
    with pytest.raises(ValueError, match="a new locale needs note"):
        make_kit(texts={"fr": {"title": "WhatsApp déconnecté"}})


def test_overrides_from_app_config(make_kit):
    kit = make_kit(texts=None)
    assert kit.state.catalogue.texts("he").title == ORIGINAL_TITLE
    from flask import Flask

    from wa_status_backend import init_app

    app = Flask("cfg")
    app.config["WA_STATUS_LOCALE"] = "en"
    app.config["WA_STATUS_TEXTS"] = {"en": {"title": "Lost WhatsApp"}}
    state = init_app(app, session=kit.db, find_business=lambda t: None, current_business=lambda: None)
    assert state.texts_for("anything").title == "Lost WhatsApp"


@pytest.mark.parametrize("texts, message", [
    ({"he": {"subject": "x"}}, "unknown key 'subject'"),
    ({"he": {"title": ""}}, "non-empty string"),
    ({"he": {"title": 5}}, "non-empty string"),
    ({"he": "just a string"}, "must be a mapping"),
    ({"he/../x": {"title": "a", "note": "b"}}, "is not a locale"),
    ({"he": {"title": "x" * 300}}, "longer than the column allows"),
])
def test_bad_overrides_stop_the_app_naming_the_problem(make_kit, texts, message):
    with pytest.raises(ValueError, match=message):
        make_kit(texts=texts)


def test_an_unknown_default_locale_stops_the_app(make_kit):
    with pytest.raises(ValueError, match="not in the catalogue"):
        make_kit(locale="fr")


def test_texts_are_stored_as_text_not_escapes(kit):
    """The database holds the Hebrew characters themselves (SQLite stores text as UTF-8)."""
    kit.post(down("business_1"))
    raw = kit.engine.raw_connection()
    try:
        title, note = raw.execute("SELECT title, note FROM wa_status_reminders").fetchone()
        (hex_title,) = raw.execute("SELECT hex(title) FROM wa_status_reminders").fetchone()
    finally:
        raw.close()
    assert (title, note) == (ORIGINAL_TITLE, ORIGINAL_NOTE)
    assert bytes.fromhex(hex_title) == ORIGINAL_TITLE.encode("utf-8")
    s = kit.db()
    assert s.scalars(select(ReminderInfo.lang)).one() == "he"
    assert s.scalars(select(Reminder.title)).one() == ORIGINAL_TITLE
    kit.db.remove()
