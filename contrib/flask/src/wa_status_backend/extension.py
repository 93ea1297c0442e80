"""``init_app``: the webhook and the bell's list, registered on an application.

``POST /api/internal/whatsapp/status-webhook`` (the sidecar's call, SPEC section 2) and
``GET /api/notifications`` (the bell, SPEC section 7: only the logged-in business's own open
reminders, only the fields the bell shows).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Union

from flask import Blueprint, Flask, Response, current_app, request
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, scoped_session

from .catalogue import DEFAULT_LOCALE, Catalogue, LocaleSource, Texts
from .models import (
    REMINDER_PRIORITY,
    REMINDER_TYPE,
    IdempotencyKey,
    Reminder,
    ReminderInfo,
    ReminderMapping,
    TenantStatus,
    utcnow,
)
from .payload import MAX_BODY_BYTES, PayloadError, StatusChange, parse_body, parse_rfc3339, validate_payload
from .signatures import TOLERANCE_SECONDS, SignatureError, parse_secrets, verify

__all__ = ["WEBHOOK_PATH", "NOTIFICATIONS_PATH", "MIN_IDEMPOTENCY_TTL", "WaStatus", "init_app"]

log = logging.getLogger("wa_status_backend")

WEBHOOK_PATH = "/api/internal/whatsapp/status-webhook"
NOTIFICATIONS_PATH = "/api/notifications"
MAX_IDEMPOTENCY_KEY_LEN = 255
# The bell shows a handful; a business never has more than one open disconnect reminder from
# the kit, so this only bounds what a table filled by other means could make us send.
MAX_NOTIFICATIONS = 50
# A signed call is accepted while its timestamp is within TOLERANCE_SECONDS of our clock, either
# way: one sent with a clock that runs ahead is first accepted up to 5 minutes before its
# timestamp and replayable until 5 minutes after it. Its idempotency key must outlive all of that,
# or a captured call replayed after the purge is applied again (a closed bell opens again).
MIN_IDEMPOTENCY_TTL = timedelta(seconds=2 * TOLERANCE_SECONDS)

SecretSource = Union[str, bytes, Callable[[], Optional[Union[str, bytes]]], None]
SigningSource = Union[str, Sequence[str], Callable[[], Union[str, Sequence[str], None]], None]


def _json(body: Any, status: int = 200, headers: Optional[Mapping[str, str]] = None) -> Response:
    """JSON as UTF-8 text: Hebrew goes out as Hebrew, never as ``\\u05d7`` escapes."""
    resp = Response(
        json.dumps(body, ensure_ascii=False, separators=(",", ":")),
        status=status,
        content_type="application/json; charset=utf-8",
    )
    for name, value in (headers or {}).items():
        resp.headers[name] = value
    return resp


def _error(status: int, error: str, message: Optional[str] = None) -> Response:
    body: dict = {"ok": False, "error": error}
    if message:
        body["message"] = message
    return _json(body, status)


def _read_body(limit: int) -> bytes:
    """At most ``limit`` bytes of the body, however the server's stream splits them (one read
    may return less than asked), and never more, whatever the body claims."""
    chunks = []
    total = 0
    while total < limit:
        chunk = request.stream.read(limit - total)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def _rfc3339(value: Any) -> Optional[str]:
    if value is None:
        return None
    if hasattr(value, "hour"):  # a datetime: naive means UTC, as the kit stores it
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value.isoformat(timespec="seconds") + "Z"
    return value.isoformat()  # a date column


def _rfc3339_exact(value: Optional[datetime]) -> str:
    return "-" if value is None else value.isoformat() + "Z"


def _older(changed_at: Optional[datetime], applied: Optional[datetime]) -> bool:
    """Whether a call's X-Status-Changed-At is strictly older than the one of the status applied
    last. Unknown on either side (no header, an unparsable one, nothing applied with one yet) is
    never older: such a call applies, as it always did.

    A stored value with no fraction may be one a database without fractional seconds (MySQL's
    DATETIME) rounded or truncated: it then stands for anything from half a second below it, so
    only a call older than that is known to be older.
    """
    if changed_at is None or applied is None:
        return False
    if applied.microsecond == 0:
        applied -= timedelta(milliseconds=500)
    return changed_at < applied


class WaStatus:
    """What :func:`init_app` set up; kept in ``app.extensions["wa_status"]``."""

    def __init__(
        self,
        *,
        session: Callable[[], Session],
        find_business: Callable[[str], Any],
        current_business: Callable[[], Any],
        reminders: ReminderMapping,
        catalogue: Catalogue,
        locale: LocaleSource,
        secret: SecretSource,
        signing_secrets: SigningSource,
        idempotency_ttl: Optional[timedelta],
        require_signatures: bool = False,
    ) -> None:
        self.session_factory = session
        self.find_business = find_business
        self.current_business = current_business
        self.reminders = reminders
        self.catalogue = catalogue
        self.locale = locale
        self.secret = secret
        self.signing_secrets = signing_secrets
        self.idempotency_ttl = idempotency_ttl
        self.require_signatures = require_signatures

    # -- configuration read per call (rotation without a restart) ---------------------

    def secret_bytes(self) -> bytes:
        secret = self.secret() if callable(self.secret) else self.secret
        if secret is None:
            secret = current_app.config.get("INTERNAL_SHARED_SECRET")
        if not secret:
            return b""
        return secret if isinstance(secret, bytes) else str(secret).encode("utf-8")

    def signing_keys(self) -> list:
        """The HMAC keys of the configured signing secrets; raises ValueError on a bad one."""
        source = self.signing_secrets() if callable(self.signing_secrets) else self.signing_secrets
        return parse_secrets(source)

    def texts_for(self, business_id: Any) -> Texts:
        """The reminder's texts in the business's locale; a broken locale callable or an
        unknown locale falls back to the default, because the reminder must be made anyway."""
        chosen: Any = self.locale
        if callable(self.locale):
            try:
                chosen = self.locale(business_id)
            except Exception:
                log.exception("status webhook: the locale callable failed for business %r; using %r",
                              business_id, self.catalogue.default_locale)
                chosen = None
        if chosen is None:
            chosen = self.catalogue.default_locale
        if not self.catalogue.has(chosen):
            log.warning("status webhook: locale %r for business %r is not in the catalogue (%s); using %r",
                        chosen, business_id, ", ".join(self.catalogue.locales), self.catalogue.default_locale)
            chosen = self.catalogue.default_locale
        return self.catalogue.texts(chosen)

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        s = self.session_factory()
        try:
            yield s
        except BaseException:
            s.rollback()
            raise
        finally:
            # A scoped session (Flask-SQLAlchemy's db.session) is the app's to remove.
            if not isinstance(self.session_factory, scoped_session):
                s.close()

    # -- the webhook -----------------------------------------------------------------------

    def handle_webhook(self) -> Response:
        expected = self.secret_bytes()
        # WSGI hands headers over as latin-1 text: encoding back gives the bytes on the wire.
        given = request.headers.get("X-INTERNAL-SECRET", "").encode("latin-1", "replace")
        if not expected:
            log.error("status webhook: no shared secret configured; refusing the call")
            return _error(401, "unauthorized")
        if not hmac.compare_digest(given, expected):
            log.warning("status webhook: wrong or missing X-INTERNAL-SECRET from %s", request.remote_addr)
            return _error(401, "unauthorized")

        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            return _error(400, "invalid_payload", f"body too large (at most {MAX_BODY_BYTES} bytes)")
        raw = _read_body(MAX_BODY_BYTES + 1)

        webhook_id = None
        try:
            keys = self.signing_keys()
        except ValueError as e:
            log.error("status webhook: the signing secrets are misconfigured (%s); refusing the call", e)
            return _error(401, "unauthorized", "the backend's signing secrets are misconfigured")
        if not keys and self.require_signatures:
            # Fail closed: a secrets source that went empty must not fall back to the shared
            # secret alone.
            log.error("status webhook: require_signatures is set but no signing secret is configured; "
                      "refusing the call (configure signing_secrets)")
            return _error(401, "unauthorized", "the backend requires signed calls but has no signing secret")
        if keys:
            try:
                webhook_id = verify(keys, request.headers, raw)
            except SignatureError as e:
                log.warning("status webhook: signature refused from %s: %s", request.remote_addr, e)
                return _error(401, "unauthorized", f"webhook signature: {e}")

        try:
            change = validate_payload(parse_body(raw))
        except PayloadError as e:
            log.warning("status webhook: refused payload: %s", e)
            return _error(400, "invalid_payload", str(e))

        key = request.headers.get("Idempotency-Key", "").strip() or None
        if key is not None and (len(key) > MAX_IDEMPOTENCY_KEY_LEN or not key.isprintable()):
            return _error(400, "invalid_payload",
                          f"Idempotency-Key must be at most {MAX_IDEMPOTENCY_KEY_LEN} printable characters")
        if webhook_id is not None:
            # The signed id is the key: an unsigned header cannot make a replay look new.
            if key is not None and key != webhook_id:
                return _error(400, "invalid_payload", "Idempotency-Key must equal webhook-id")
            key = webhook_id

        changed_at = None
        changed_at_raw = request.headers.get("X-Status-Changed-At")
        if changed_at_raw:
            changed_at = parse_rfc3339(changed_at_raw)
            if changed_at is None:
                log.warning("status webhook: ignoring unparsable X-Status-Changed-At %r", changed_at_raw[:64])

        with self.session() as s:
            try:
                resp = self._process(s, change, key, changed_at)
                s.commit()
                return resp
            except IntegrityError:
                # Two calls raced with one key (the tenant lock serialises same-tenant calls):
                # the winner's row decides, as a replay or a conflict.
                s.rollback()
                stored = s.get(IdempotencyKey, key) if key is not None else None
                if stored is None:
                    raise
                return self._replay(stored, change, key)

    def _business(self, tenant_id: str) -> Optional[tuple]:
        found = self.find_business(tenant_id)
        if found is None:
            return None
        try:
            business_id, owner_id = found
        except (TypeError, ValueError):
            raise TypeError("find_business must return (business_id, owner_id) or None") from None
        return self.reminders.coerce_business_id(business_id), owner_id

    def _lock_tenant(self, s: Session, tenant_id: str) -> TenantStatus:
        """The tenant's status row, locked until commit: two calls for one tenant take turns.

        A missing row is created and committed first, on its own, so the lock never needs a
        savepoint (which pysqlite mishandles) and a lost insert race is harmless.
        """
        if s.get(TenantStatus, tenant_id) is None:
            s.add(TenantStatus(tenant_id=tenant_id))
            try:
                s.commit()
            except IntegrityError:
                s.rollback()
        else:
            s.rollback()  # end the read so the locking read below starts the real transaction
        row = s.get(TenantStatus, tenant_id, with_for_update=True, populate_existing=True)
        assert row is not None
        return row

    def _replay(self, stored: IdempotencyKey, change: StatusChange, key: str) -> Response:
        if not hmac.compare_digest(stored.payload_sha256, change.fingerprint):
            log.warning("status webhook: Idempotency-Key %r reused with another payload (tenant %r)",
                        key, change.tenant_id)
            return _error(409, "idempotency_key_reused",
                          "this Idempotency-Key was already used with another payload")
        log.info("status webhook: replay of Idempotency-Key %r for tenant %r", key, change.tenant_id)
        try:
            body = json.loads(stored.response)
        except ValueError:
            body = {"ok": True}
        return _json(body, stored.status_code, {"Idempotent-Replayed": "true"})

    def _process(self, s: Session, change: StatusChange, key: Optional[str], changed_at: Any) -> Response:
        business = self._business(change.tenant_id)
        lock = self._lock_tenant(s, change.tenant_id) if business is not None else None
        if key is not None:
            stored = s.get(IdempotencyKey, key)
            if stored is not None:
                return self._replay(stored, change, key)

        body = {"ok": True}
        if business is None:
            log.warning("status webhook: unknown tenant %r (status %s); ignored", change.tenant_id, change.status)
        elif _older(changed_at, lock.changed_at):
            # A call its sender gave up on (timeout, kill) that reaches us after a newer
            # transition was applied: acknowledged, so it is not retried, but it changes nothing.
            log.info("status webhook: tenant %r %s changed at %s is older than the %s changed at %s "
                     "already applied; ignored", change.tenant_id, change.status, _rfc3339_exact(changed_at),
                     lock.status, _rfc3339_exact(lock.changed_at))
        else:
            assert lock is not None
            self._apply(s, lock, business, change, key, changed_at)

        if key is not None:
            now = utcnow()
            if self.idempotency_ttl:
                s.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < now - self.idempotency_ttl))
            s.add(IdempotencyKey(key=key, payload_sha256=change.fingerprint, status_code=200,
                                 response=json.dumps(body), created_at=now))
            s.flush()
        return _json(body)

    def _apply(self, s: Session, lock: TenantStatus, business: tuple, change: StatusChange,
               key: Optional[str], changed_at: Any) -> None:
        business_id, owner_id = business
        m = self.reminders
        now = utcnow()
        lock.business_id = str(business_id)
        lock.status = change.status
        lock.reason = change.reason
        lock.changed_at = changed_at
        lock.received_at = now

        open_ = s.scalars(
            select(m.model)
            .where(m.column("tenant_id") == business_id,
                   m.column("type") == REMINDER_TYPE,
                   m.column("completed") == m.open_value)
            .order_by(getattr(m.model, m.id_attr))
        ).all()
        if change.status == "disconnected":
            if open_:
                log.info("status webhook: tenant %r disconnected; reminder %s already open",
                         change.tenant_id, getattr(open_[0], m.id_attr))
                return
            texts = self.texts_for(business_id)
            values = {
                "tenant_id": business_id,
                "lead_id": None,
                "title": texts.title,
                "note": texts.note,
                "due_date": m.now_for("due_date") if m.fields["due_date"] else None,
                "priority": REMINDER_PRIORITY,
                "type": REMINDER_TYPE,
                "created_by": owner_id,
                "completed": m.open_value,
                "created_at": now,
            }
            reminder = m.model(**{m.fields[f]: v for f, v in values.items() if m.fields.get(f)})
            s.add(reminder)
            s.flush()  # the reminder's id, for the info row
            reminder_id = getattr(reminder, m.id_attr)
            s.add(ReminderInfo(
                reminder_id=str(reminder_id), business_id=str(business_id), tenant_id=change.tenant_id,
                lang=texts.lang, reason=change.reason, status_changed_at=changed_at,
                idempotency_key=key, created_at=now,
            ))
            log.info("status webhook: tenant %r disconnected (%r); reminder %s created (%s)",
                     change.tenant_id, change.reason, reminder_id, texts.lang)
        else:
            for reminder in open_:
                setattr(reminder, m.fields["completed"], m.completed_value)
                if m.fields["completed_at"]:
                    setattr(reminder, m.fields["completed_at"], m.now_for("completed_at"))
            log.info("status webhook: tenant %r connected; %d reminder(s) completed", change.tenant_id, len(open_))

    # -- the bell's list ---------------------------------------------------------------------

    def logged_in_business(self) -> Any:
        """The business the request's login belongs to, or None: no login, a login callable
        that raised, or an id that cannot be a business id of the reminder table."""
        try:
            raw = self.current_business()
        except Exception as e:  # the app's way of saying "not logged in" (or a broken login: closed either way)
            log.info("notifications: no login (%s)", type(e).__name__)
            return None
        if raw is None or raw == "":
            return None
        try:
            return self.reminders.coerce_business_id(raw)
        except ValueError as e:
            log.error("notifications: the login callable returned an unusable business id: %s", e)
            return None

    def handle_notifications(self) -> Response:
        business_id = self.logged_in_business()
        if business_id is None:
            return _error(401, "unauthorized")
        m = self.reminders
        id_col = getattr(m.model, m.id_attr)
        with self.session() as s:
            rows = s.scalars(
                select(m.model)
                .where(m.column("tenant_id") == business_id,
                       m.column("type") == REMINDER_TYPE,
                       m.column("completed") == m.open_value)
                .order_by(id_col.desc())
                .limit(MAX_NOTIFICATIONS)
            ).all()
            ids = [str(getattr(r, m.id_attr)) for r in rows]
            infos = {
                i.reminder_id: i
                for i in (s.scalars(select(ReminderInfo).where(ReminderInfo.reminder_id.in_(ids))).all() if ids else [])
            }
            items = []
            for r in rows:
                rid = getattr(r, m.id_attr)
                info = infos.get(str(rid))
                created = getattr(r, m.fields["created_at"]) if m.fields["created_at"] else None
                if created is None and info is not None:
                    created = info.created_at
                items.append({
                    "id": rid,
                    "type": getattr(r, m.fields["type"]),
                    "priority": getattr(r, m.fields["priority"]),
                    "title": getattr(r, m.fields["title"]),
                    "note": getattr(r, m.fields["note"]),
                    "created_at": _rfc3339(created),
                    "lang": info.lang if info is not None else self.texts_for(business_id).lang,
                })
            s.rollback()
        # Per-login data: no cache may keep it or hand it to another login.
        return _json({"notifications": items, "unread_count": len(items)},
                     headers={"Cache-Control": "no-store", "Vary": "Cookie, Authorization"})


def init_app(
    app: Flask,
    *,
    session: Callable[[], Session],
    find_business: Callable[[str], Any],
    current_business: Callable[[], Any],
    reminders: Optional[ReminderMapping] = None,
    locale: LocaleSource = None,
    texts: Optional[Mapping[str, Mapping[str, str]]] = None,
    secret: SecretSource = None,
    signing_secrets: SigningSource = None,
    webhook_path: str = WEBHOOK_PATH,
    notifications_path: Optional[str] = NOTIFICATIONS_PATH,
    idempotency_ttl: Optional[timedelta] = timedelta(days=7),
    require_signatures: bool = False,
    name: str = "wa_status",
) -> WaStatus:
    """Registers the webhook and the bell's list on ``app``; returns the extension's state.

    session:          a session factory: Flask-SQLAlchemy's ``db.session``, a ``scoped_session``
                      or a ``sessionmaker``.
    find_business:    ``tenant_id -> (business_id, owner_id) | None``: the gateway's tenant id
                      (its session name) to the app's business; None for a tenant the app does not
                      know (answered 200 and ignored, as SPEC section 2 says).
    current_business: the app's login: returns the logged-in user's business id, or None / raises
                      when nobody is logged in (401). The only way ``GET /api/notifications`` picks
                      a business; no parameter, header or path can pick another.
    reminders:        a :class:`ReminderMapping` onto the app's ``CRMReminder`` model; default: the
                      kit's :class:`~wa_status_backend.models.Reminder`.
    locale:           ``"he"`` (default; ``app.config["WA_STATUS_LOCALE"]``) or ``"en"``, or a callable
                      ``business_id -> locale | None`` for apps whose businesses differ.
    texts:            overrides ``{locale: {"title": ..., "note": ...}}`` (``app.config["WA_STATUS_TEXTS"]``).
    secret:           the shared secret (str, bytes or a callable read per call); default
                      ``app.config["INTERNAL_SHARED_SECRET"]``. None configured refuses every call.
    signing_secrets:  Standard Webhooks secrets (``whsec_...``): a whitespace-separated string, a
                      list, or a callable read per call; default ``app.config["WEBHOOK_SIGNING_SECRET"]``.
                      When any is configured, every call must carry a valid signature.
    require_signatures: True refuses every call (401) while no signing secret is configured, e.g.
                      when a callable source returns nothing, instead of accepting calls with the
                      shared secret alone; init_app raises when a fixed source is empty.
    notifications_path: None leaves the bell's list out.
    idempotency_ttl:  how long an Idempotency-Key (a signed call's webhook-id) is kept; at least
                      :data:`MIN_IDEMPOTENCY_TTL` (10 minutes: the signatures' replay window), None
                      keeps keys forever.
    """
    if not callable(session):
        raise TypeError("session must be a session factory (db.session, a scoped_session or a sessionmaker)")
    if not callable(find_business):
        raise TypeError("find_business must be a callable: tenant_id -> (business_id, owner_id) or None")
    if not callable(current_business):
        raise TypeError("current_business must be a callable returning the logged-in business id or None")
    if locale is None:
        locale = app.config.get("WA_STATUS_LOCALE", DEFAULT_LOCALE)
    if texts is None:
        texts = app.config.get("WA_STATUS_TEXTS")
    catalogue = Catalogue(texts, default_locale=locale if isinstance(locale, str) else DEFAULT_LOCALE)
    if idempotency_ttl is not None:
        if not isinstance(idempotency_ttl, timedelta):
            raise TypeError("idempotency_ttl must be a datetime.timedelta, or None to keep keys forever")
        if idempotency_ttl < MIN_IDEMPOTENCY_TTL:
            raise ValueError(
                f"idempotency_ttl={idempotency_ttl} is shorter than the {MIN_IDEMPOTENCY_TTL} a signed call can "
                f"be replayed in (its timestamp is accepted {TOLERANCE_SECONDS // 60} minutes either way): a "
                f"replay after its key was purged would be applied again; set idempotency_ttl to at least "
                f"timedelta(minutes={MIN_IDEMPOTENCY_TTL.seconds // 60}) (default 7 days)")
    if signing_secrets is None:
        signing_secrets = app.config.get("WEBHOOK_SIGNING_SECRET")
    if not isinstance(require_signatures, bool):
        raise TypeError("require_signatures must be True or False")
    if not callable(signing_secrets):
        keys = parse_secrets(signing_secrets)  # a bad secret stops the app now, naming the problem
        if require_signatures and not keys:
            raise ValueError("require_signatures=True but no signing secret is configured: set signing_secrets "
                             '(or app.config["WEBHOOK_SIGNING_SECRET"]) to one or more whsec_... secrets')

    state = WaStatus(
        session=session,
        find_business=find_business,
        current_business=current_business,
        reminders=reminders if reminders is not None else ReminderMapping(Reminder),
        catalogue=catalogue,
        locale=locale,
        secret=secret,
        signing_secrets=signing_secrets,
        idempotency_ttl=idempotency_ttl,
        require_signatures=require_signatures,
    )
    bp = Blueprint(name, __name__)
    bp.add_url_rule(webhook_path, "status_webhook", state.handle_webhook, methods=["POST"])
    if notifications_path:
        bp.add_url_rule(notifications_path, "notifications", state.handle_notifications, methods=["GET"])
    app.register_blueprint(bp)
    app.extensions[name] = state
    return state
