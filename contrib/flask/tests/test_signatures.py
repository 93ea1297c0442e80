"""Standard Webhooks signatures (SPEC section 2): the published test vector, rotation, the
5-minute tolerance both ways, and the webhook refusing unsigned or badly signed calls."""

from __future__ import annotations

import base64
import json
import os
import time
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from flask import Flask
from sqlalchemy.orm import sessionmaker

from conftest import down, signed_headers, up, whsec
import wa_status_backend.extension
import wa_status_backend.signatures
from wa_status_backend import MIN_IDEMPOTENCY_TTL, SignatureError, init_app, parse_secret, parse_secrets, sign, verify

# The Standard Webhooks specification's published test vector, as its reference libraries test
# it: github.com/standard-webhooks/standard-webhooks, libraries/python/tests/test_webhooks.py,
# test_sign_function (the same values in the Go, JavaScript, PHP, Ruby, Java and C# suites),
# read at commit b2fa7b8719fb75d326b591077f5d1b385cfcdfae.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
VECTOR_HEADERS = {
    "webhook-id": VECTOR_ID,
    "webhook-timestamp": str(VECTOR_TIMESTAMP),
    "webhook-signature": VECTOR_SIGNATURE,
}


def test_the_published_test_vector_signs_and_verifies():
    key = parse_secret(VECTOR_SECRET)
    assert sign(key, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE
    assert verify([key], VECTOR_HEADERS, VECTOR_BODY, now=VECTOR_TIMESTAMP) == VECTOR_ID
    # the vector's own bad signature (its last character changed) is refused
    bad = dict(VECTOR_HEADERS, **{"webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA="})
    with pytest.raises(SignatureError, match="no webhook-signature matches"):
        verify([key], bad, VECTOR_BODY, now=VECTOR_TIMESTAMP)


def test_the_vector_among_other_entries_and_with_an_unpadded_secret():
    key = parse_secret(VECTOR_SECRET)
    multi = " ".join([
        "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
        "v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
        "v1a,hnO3f9T8Ytu9HwrXslvumlUpqtNVqkhqw/enGzPCXe5BdqzCInXqYXFymVJaA7AZdpXwVLPo3mNl8EM+m7TBAg==",
        VECTOR_SIGNATURE,
        "garbage",
        "v1,not base64!",
    ])
    assert verify([key], dict(VECTOR_HEADERS, **{"webhook-signature": multi}), VECTOR_BODY, now=VECTOR_TIMESTAMP)
    # base64 with its padding dropped, as Standard Webhooks' libraries accept it
    assert parse_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS") == base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS=")


@pytest.mark.parametrize("skew", [-300, -1, 0, 1, 300])
def test_within_five_minutes_either_way_is_accepted(skew):
    key = parse_secret(VECTOR_SECRET)
    assert verify([key], VECTOR_HEADERS, VECTOR_BODY, now=VECTOR_TIMESTAMP + skew) == VECTOR_ID


@pytest.mark.parametrize("skew, word", [(301, "old"), (86400, "old"), (-301, "ahead"), (-86400, "ahead")])
def test_outside_five_minutes_either_way_is_refused(skew, word):
    key = parse_secret(VECTOR_SECRET)
    with pytest.raises(SignatureError, match=word):
        verify([key], VECTOR_HEADERS, VECTOR_BODY, now=VECTOR_TIMESTAMP + skew)


def test_every_configured_secret_is_tried():
    old, new = os.urandom(32), os.urandom(32)
    other = os.urandom(32)
    body = b'{"tenant_id":"business_1","status":"connected","reason":null}'
    now = int(time.time())
    by_old = {"webhook-id": "msg_1", "webhook-timestamp": str(now), "webhook-signature": sign(old, "msg_1", now, body)}
    by_new = dict(by_old, **{"webhook-signature": sign(new, "msg_1", now, body)})
    assert verify([old, new], by_old, body) == "msg_1"
    assert verify([new, old], by_old, body) == "msg_1"
    assert verify([old, new], by_new, body) == "msg_1"
    with pytest.raises(SignatureError):
        verify([other], by_old, body)


@pytest.mark.parametrize(
    "change",
    [
        {"webhook-id": None},
        {"webhook-timestamp": None},
        {"webhook-signature": None},
        {"webhook-timestamp": "hello"},
        {"webhook-timestamp": "1614265330.5"},
        {"webhook-timestamp": "-1614265330"},
        {"webhook-timestamp": "9" * 40},
        {"webhook-id": "msg\nwith a newline"},
        {"webhook-id": "x" * 300},
        {"webhook-id": "msg_other"},  # the id is signed
        {"webhook-timestamp": str(VECTOR_TIMESTAMP + 1)},  # the timestamp is signed
        {"webhook-signature": "v1a," + VECTOR_SIGNATURE[3:]},
        {"webhook-signature": VECTOR_SIGNATURE[3:]},
        {"webhook-signature": "v1," + VECTOR_SIGNATURE[3:-8]},
    ],
    ids=lambda c: next(iter(c)) + "=" + repr(next(iter(c.values())))[:24],
)
def test_missing_malformed_or_altered_headers_are_refused(change):
    headers = {k: v for k, v in dict(VECTOR_HEADERS, **change).items() if v is not None}
    with pytest.raises(SignatureError):
        verify([parse_secret(VECTOR_SECRET)], headers, VECTOR_BODY, now=VECTOR_TIMESTAMP)


def test_the_body_is_signed_byte_for_byte():
    key = parse_secret(VECTOR_SECRET)
    for body in (b'{"test":2432232314}', b'{"test": 2432232315}', VECTOR_BODY + b"\n", b""):
        with pytest.raises(SignatureError):
            verify([key], VECTOR_HEADERS, body, now=VECTOR_TIMESTAMP)


@pytest.mark.parametrize("bad", ["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_", "whsec_not base64!", "whsec_====", "s3cret"])
def test_bad_secrets_are_refused_without_echoing_them(bad):
    with pytest.raises(ValueError) as e:
        parse_secret(bad)
    assert "whsec_" in str(e.value)
    if len(bad) > 8:
        assert bad not in str(e.value)


def test_parse_secrets_takes_a_whitespace_separated_string_or_a_list():
    a, b = whsec(b"a" * 24), whsec(b"b" * 32)
    assert parse_secrets(f" {a}\n{b}\t") == [b"a" * 24, b"b" * 32]
    assert parse_secrets([a, b]) == [b"a" * 24, b"b" * 32]
    assert parse_secrets("") == [] and parse_secrets(None) == []


# ------------------------------------------------------------------ through the webhook


SECRET_A = whsec(os.urandom(32))
SECRET_B = whsec(os.urandom(32))


def signed_post(kit, body_obj, secrets, *, key=None, msg_id="msg_1", timestamp=None, headers=None):
    raw = json.dumps(body_obj).encode()
    h = signed_headers(secrets, raw, msg_id=msg_id, timestamp=timestamp)
    h.update(headers or {})
    return kit.post(raw=raw, key=key, headers=h)


def test_with_signing_secrets_an_unsigned_call_is_401(make_kit):
    kit = make_kit(signing_secrets=SECRET_A)
    r = kit.post(down(), key="msg_1")
    assert r.status_code == 401
    assert r.get_json()["error"] == "unauthorized" and "unsigned" in r.get_json()["message"]
    assert kit.reminders() == []


def test_a_signed_call_is_accepted_and_its_webhook_id_is_the_idempotency_key(make_kit):
    kit = make_kit(signing_secrets=SECRET_A)
    assert signed_post(kit, down(), [SECRET_A], key="msg_1", msg_id="msg_1").status_code == 200
    assert kit.reminders()[0]["idempotency_key"] == "msg_1"
    # a retry (new attempt timestamp, same id) replays; Idempotency-Key may be left out
    r = signed_post(kit, down(), [SECRET_A], msg_id="msg_1", timestamp=int(time.time()) - 10)
    assert r.status_code == 200 and r.headers["Idempotent-Replayed"] == "true"
    # a different Idempotency-Key cannot make the signed event look new
    r = signed_post(kit, down(), [SECRET_A], key="fresh-key", msg_id="msg_1")
    assert r.status_code == 400 and "webhook-id" in r.get_json()["message"]
    assert len(kit.reminders()) == 1


def test_rotation_either_secret_signs_and_both_may_be_sent(make_kit):
    kit = make_kit(signing_secrets=[SECRET_A, SECRET_B])
    assert signed_post(kit, down("business_1"), [SECRET_A], msg_id="m1").status_code == 200
    assert signed_post(kit, down("business_2"), [SECRET_B], msg_id="m2").status_code == 200
    assert signed_post(kit, {"tenant_id": "business_1", "status": "connected", "reason": None},
                       [whsec(os.urandom(32)), SECRET_B], msg_id="m3").status_code == 200
    assert signed_post(kit, down("business_1"), [whsec(os.urandom(32))], msg_id="m4").status_code == 401


@pytest.mark.parametrize("age", [310, -310, 3600])  # the exact boundary: the fixed-clock tests above
def test_an_expired_or_future_timestamp_is_401(make_kit, age):
    kit = make_kit(signing_secrets=SECRET_A)
    r = signed_post(kit, down(), [SECRET_A], timestamp=int(time.time()) - age)
    assert r.status_code == 401 and "tolerance" in r.get_json()["message"]
    assert kit.reminders() == []


def test_a_signature_over_another_body_is_401(make_kit):
    kit = make_kit(signing_secrets=SECRET_A)
    raw = json.dumps(down()).encode()
    h = signed_headers([SECRET_A], json.dumps(down(reason="something else")).encode())
    assert kit.post(raw=raw, headers=h).status_code == 401


def test_the_shared_secret_is_still_checked_on_a_signed_call(make_kit):
    kit = make_kit(signing_secrets=SECRET_A)
    raw = json.dumps(down()).encode()
    assert kit.post(raw=raw, headers=signed_headers([SECRET_A], raw), secret="wrong").status_code == 401
    assert kit.reminders() == []


def test_signing_secrets_from_app_config_and_a_callable(make_kit):
    kit = make_kit()
    assert kit.post(down(), key="k").status_code == 200  # none configured: signatures not needed
    live = {"secrets": SECRET_A}
    kit2 = make_kit(signing_secrets=lambda: live["secrets"])
    assert signed_post(kit2, down(), [SECRET_A], msg_id="m1").status_code == 200
    live["secrets"] = SECRET_B  # rotated without a restart
    assert signed_post(kit2, down(), [SECRET_A], msg_id="m2").status_code == 401
    live["secrets"] = "not-a-whsec"  # a broken rotation refuses calls, it does not open up
    r = signed_post(kit2, down(), [SECRET_A], msg_id="m3")
    assert r.status_code == 401 and "misconfigured" in r.get_json()["message"]


def test_a_bad_configured_secret_stops_init_app(make_kit):
    with pytest.raises(ValueError, match="whsec_"):
        make_kit(signing_secrets="s3cret-but-not-standard")


# ------------------------------------------------------------------ replays and idempotency_ttl


def bare_init_app(**options):
    """init_app on a fresh app (settings are checked before any database is touched)."""
    return init_app(Flask("ttl_check"), session=sessionmaker(), find_business=lambda t: None,
                    current_business=lambda: None, secret="s", **options)


@pytest.mark.parametrize("ttl", [timedelta(0), timedelta(seconds=1), timedelta(minutes=5),
                                 MIN_IDEMPOTENCY_TTL - timedelta(seconds=1)],
                         ids=["zero", "1s", "5min", "just-under"])
def test_an_idempotency_ttl_shorter_than_the_replay_window_stops_init_app(ttl):
    # A key purged while its signed call can still be replayed lets the replay apply again.
    with pytest.raises(ValueError, match=r"idempotency_ttl.*at least timedelta\(minutes=10\)"):
        bare_init_app(signing_secrets=SECRET_A, idempotency_ttl=ttl)
    with pytest.raises(ValueError, match="idempotency_ttl"):  # signing secrets may come later: refused anyway
        bare_init_app(idempotency_ttl=ttl)


def test_idempotency_ttl_must_be_a_timedelta_or_none():
    with pytest.raises(TypeError, match="timedelta"):
        bare_init_app(idempotency_ttl=3600)
    assert bare_init_app(idempotency_ttl=None).idempotency_ttl is None  # keys kept forever
    assert bare_init_app(idempotency_ttl=MIN_IDEMPOTENCY_TTL).idempotency_ttl == MIN_IDEMPOTENCY_TTL
    assert MIN_IDEMPOTENCY_TTL == timedelta(minutes=10)


class Clock:
    """One hand-moved clock for both the signature check and the rows' timestamps."""

    def __init__(self, start: float):
        self.t = start

    def utcnow(self):
        return datetime.fromtimestamp(self.t, timezone.utc).replace(tzinfo=None)


def test_with_the_shortest_ttl_a_signed_call_cannot_be_replayed_after_its_key_is_gone(make_kit, monkeypatch):
    """The worst case: the sender's clock runs 5 minutes ahead, so its call is accepted 5 minutes
    before its timestamp and may be replayed until 5 minutes after it. With the shortest
    idempotency_ttl allowed, the key outlives the signature: the replay is a stored answer while
    it verifies, and refused (401) once its key can be purged."""
    clock = Clock(1_900_000_000.0)
    monkeypatch.setattr(wa_status_backend.signatures, "time", SimpleNamespace(time=lambda: clock.t))
    monkeypatch.setattr(wa_status_backend.extension, "utcnow", clock.utcnow)
    kit = make_kit(signing_secrets=SECRET_A, idempotency_ttl=MIN_IDEMPOTENCY_TTL)
    t0 = int(clock.t)
    ahead = 300  # the sender's clock, as far ahead as is accepted

    def send(body, msg_id, stamp=None):
        return signed_post(kit, body, [SECRET_A], msg_id=msg_id,
                           timestamp=int(clock.t) + ahead if stamp is None else stamp)

    assert send(down(), "evt_down", t0 + ahead).status_code == 200  # captured by an attacker
    clock.t += 1
    assert send(up(), "evt_up").status_code == 200
    assert kit.open_reminders("b1") == []

    clock.t = t0 + 2 * ahead - 1  # the captured call's timestamp is 299 s old: it still verifies
    assert send(up(), "evt_other").status_code == 200  # a genuine call runs the purge
    r = send(down(), "evt_down", t0 + ahead)
    assert r.status_code == 200 and r.headers["Idempotent-Replayed"] == "true"
    assert kit.open_reminders("b1") == []  # not applied again

    clock.t = t0 + 2 * ahead + 1  # 301 s old: the signature refuses it ...
    r = send(down(), "evt_down", t0 + ahead)
    assert r.status_code == 401 and "tolerance" in r.get_json()["message"]
    assert send(up(), "evt_late").status_code == 200  # ... and now its key may go
    assert kit.key_count() == 3  # evt_down purged (stored at t0), evt_up, evt_other, evt_late kept
    assert kit.open_reminders("b1") == []


# ------------------------------------------------------------------ require_signatures


def test_require_signatures_without_a_signing_secret_stops_init_app():
    for empty in (None, "", "  \n", []):
        with pytest.raises(ValueError, match=r"require_signatures=True.*signing_secrets.*whsec_"):
            bare_init_app(signing_secrets=empty, require_signatures=True)
    with pytest.raises(TypeError, match="require_signatures"):
        bare_init_app(signing_secrets=SECRET_A, require_signatures="yes")


def test_require_signatures_fails_closed_when_the_secrets_source_goes_empty(make_kit, caplog):
    live = {"secrets": SECRET_A}
    kit = make_kit(signing_secrets=lambda: live["secrets"], require_signatures=True)
    assert signed_post(kit, down(), [SECRET_A], msg_id="m1").status_code == 200
    for empty in ("", None, []):
        live["secrets"] = empty  # a secrets file emptied, a vault that answers nothing
        for r in (kit.post(up(), key="m2"), signed_post(kit, up(), [SECRET_A], msg_id="m2")):
            assert r.status_code == 401, r.get_data(as_text=True)
            assert "requires signed calls" in r.get_json()["message"]
    assert "require_signatures is set but no signing secret" in caplog.text
    assert len(kit.open_reminders("b1")) == 1 and kit.key_count() == 1  # nothing applied meanwhile
    live["secrets"] = SECRET_A
    assert signed_post(kit, up(), [SECRET_A], msg_id="m2").status_code == 200
    assert kit.open_reminders("b1") == []


def test_without_require_signatures_an_empty_source_falls_back_to_the_shared_secret(make_kit):
    # SPEC section 2: signatures are optional; this is the default the setting above closes.
    live = {"secrets": SECRET_A}
    kit = make_kit(signing_secrets=lambda: live["secrets"])
    assert kit.post(down(), key="m1").status_code == 401
    live["secrets"] = ""
    assert kit.post(down(), key="m1").status_code == 200
