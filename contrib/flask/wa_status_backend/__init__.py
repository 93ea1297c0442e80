"""Backend side of wa-status-sidecar: a Flask blueprint for the status webhook.

The sidecar calls ``POST /api/internal/whatsapp/status-webhook`` with

    headers: X-INTERNAL-SECRET, Idempotency-Key, X-Status-Changed-At
    body:    {"tenant_id": "business_1", "status": "connected" | "disconnected", "reason": str | null}

and expects ``200 {"ok": true}`` (also for an unknown tenant), ``401`` for a wrong
secret and ``400`` for a bad payload.

``disconnected`` opens one high-priority reminder of type ``system_whatsapp_disconnect``
for the business owner (unless one is already open); ``connected`` completes the open
ones. The data access goes through a small store object (see :class:`StatusStore`) so
the blueprint can sit on top of an existing app's models; :class:`SqliteStore` is a
stdlib-only implementation used by the demo app and the tests.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import os
import sqlite3
import threading
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Union

from flask import Blueprint, Response, current_app, jsonify, request

__all__ = [
    "REMINDER_TYPE",
    "REMINDER_PRIORITY",
    "REMINDER_TITLE",
    "REMINDER_MESSAGE",
    "WEBHOOK_PATH",
    "NOTIFICATIONS_PATH",
    "StatusStore",
    "SqliteStore",
    "create_blueprint",
    "validate_payload",
    "PayloadError",
]

log = logging.getLogger("wa_status_backend")

REMINDER_TYPE = "system_whatsapp_disconnect"
REMINDER_PRIORITY = "high"
REMINDER_TITLE = "WhatsApp connection lost"
REMINDER_MESSAGE = "WhatsApp connection lost - reconnect in the WhatsApp settings"

WEBHOOK_PATH = "/api/internal/whatsapp/status-webhook"
NOTIFICATIONS_PATH = "/api/notifications"

STATUSES = ("connected", "disconnected")
MAX_BODY_BYTES = 64 * 1024
MAX_TENANT_ID_LEN = 255
MAX_REASON_LEN = 2000
MAX_IDEMPOTENCY_KEY_LEN = 255


def utcnow() -> str:
    """Current UTC time as RFC 3339 (``2025-01-31T12:00:00.123456Z``)."""
    return _fmt(datetime.now(timezone.utc))


def _fmt(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def parse_rfc3339(value: str) -> Optional[str]:
    """Normalise an RFC 3339 timestamp to UTC (``...Z``); None if unparsable or naive."""
    v = value.strip()
    if not v or len(v) > 64:
        return None
    if v[-1] in "zZ":
        v = v[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(v)
    except ValueError:
        return None
    if dt.tzinfo is None:
        return None
    return _fmt(dt)


# --------------------------------------------------------------------------- store


class StatusStore:
    """What the blueprint needs from the app's data layer.

    Implement these on top of your own models (SQLAlchemy, Django ORM, ...). Objects
    returned are plain mappings. ``transaction()`` should make one webhook call atomic
    (and ideally serialise concurrent calls, so "create unless one is open" cannot race);
    the default does nothing.
    """

    # -- required -------------------------------------------------------------
    def find_business(self, tenant_id: str) -> Optional[Mapping[str, Any]]:
        """The business for a gateway tenant id: ``{"id", "owner_id", ...}`` or None."""
        raise NotImplementedError

    def open_reminders(
        self, owner_id: Any, type: str, business_id: Any = None
    ) -> Sequence[Mapping[str, Any]]:
        """Open reminders of ``type`` for the owner (limited to ``business_id`` if given)."""
        raise NotImplementedError

    def create_reminder(
        self,
        *,
        owner_id: Any,
        business_id: Any,
        type: str,
        priority: str,
        title: str,
        message: str,
        details: Mapping[str, Any],
    ) -> Mapping[str, Any]:
        """Create an open reminder; returns it (at least ``{"id": ...}``)."""
        raise NotImplementedError

    def complete_reminders(self, reminder_ids: Sequence[Any]) -> int:
        """Mark the reminders completed; returns how many changed."""
        raise NotImplementedError

    def seen_idempotency_key(self, key: str) -> Optional[Mapping[str, Any]]:
        """The stored response ``{"status": int, "body": dict}`` for a processed key, or None."""
        raise NotImplementedError

    def remember_idempotency_key(self, key: str, response: Mapping[str, Any]) -> None:
        """Store the response ``{"status": int, "body": dict}`` of a processed key."""
        raise NotImplementedError

    # -- optional -------------------------------------------------------------
    def record_status(
        self,
        business: Mapping[str, Any],
        status: str,
        reason: Optional[str],
        changed_at: Optional[str],
    ) -> None:
        """Remember the tenant's last reported WhatsApp status (default: nothing)."""

    def list_open_reminders(self, owner_id: Any = None) -> Sequence[Mapping[str, Any]]:
        """Open reminders, newest first, for ``GET /api/notifications``."""
        raise NotImplementedError

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        yield None


class SqliteStore(StatusStore):
    """:class:`StatusStore` on the stdlib ``sqlite3`` module.

    Each webhook call runs in one ``BEGIN IMMEDIATE`` transaction, so concurrent calls
    (threaded server, several processes on one file) are serialised and a reminder is
    never duplicated. Idempotency keys older than ``idempotency_ttl`` are pruned.
    ``path=":memory:"`` works too (one shared connection behind a lock).
    """

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS businesses (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        tenant_id TEXT    NOT NULL UNIQUE,
        owner_id  INTEGER NOT NULL,
        name      TEXT    NOT NULL DEFAULT ''
    );
    CREATE TABLE IF NOT EXISTS reminders (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        owner_id     INTEGER NOT NULL,
        business_id  INTEGER REFERENCES businesses(id),
        type         TEXT    NOT NULL,
        priority     TEXT    NOT NULL,
        title        TEXT    NOT NULL,
        message      TEXT    NOT NULL,
        details      TEXT,
        status       TEXT    NOT NULL DEFAULT 'open',
        created_at   TEXT    NOT NULL,
        completed_at TEXT
    );
    CREATE INDEX IF NOT EXISTS reminders_owner_open ON reminders(owner_id, status, type);
    CREATE UNIQUE INDEX IF NOT EXISTS reminders_one_open_wa_disconnect
        ON reminders(business_id, type)
        WHERE status = 'open' AND type = 'system_whatsapp_disconnect';
    CREATE TABLE IF NOT EXISTS idempotency_keys (
        key         TEXT    PRIMARY KEY,
        status_code INTEGER NOT NULL,
        response    TEXT    NOT NULL,
        created_at  TEXT    NOT NULL
    );
    CREATE INDEX IF NOT EXISTS idempotency_keys_created ON idempotency_keys(created_at);
    CREATE TABLE IF NOT EXISTS whatsapp_status (
        business_id INTEGER PRIMARY KEY REFERENCES businesses(id),
        tenant_id   TEXT NOT NULL,
        status      TEXT NOT NULL,
        reason      TEXT,
        changed_at  TEXT,
        received_at TEXT NOT NULL
    );
    """

    def __init__(
        self,
        path: Union[str, "os.PathLike[str]"],
        *,
        idempotency_ttl: timedelta = timedelta(days=7),
        busy_timeout: float = 30.0,
    ) -> None:
        self.path = str(path)
        self.idempotency_ttl = idempotency_ttl
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self._memory = self.path == ":memory:"
        self._lock = threading.RLock()
        self._shared: Optional[sqlite3.Connection] = None
        if self._memory:
            self._shared = self._open()
            with self._lock:
                self._shared.executescript(self.SCHEMA)
        else:
            conn = self._open()
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(self.SCHEMA)  # idempotent (IF NOT EXISTS)
            finally:
                conn.close()

    # -- connections ------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout,
            isolation_level=None,  # explicit BEGIN/COMMIT below
            check_same_thread=not self._memory,
        )
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        current = getattr(self._local, "conn", None)
        if current is not None:  # nested: join the outer transaction
            yield current
            return
        with self._lock if self._memory else contextlib.nullcontext():
            conn = self._shared if self._memory else self._open()
            assert conn is not None
            try:
                conn.execute("BEGIN IMMEDIATE")
                self._local.conn = conn
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            finally:
                self._local.conn = None
                if not self._memory:
                    conn.close()

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        current = getattr(self._local, "conn", None)
        if current is not None:
            yield current
            return
        if self._memory:
            with self._lock:
                yield self._shared  # type: ignore[misc]
            return
        conn = self._open()
        try:
            yield conn
        finally:
            conn.close()

    def close(self) -> None:
        if self._shared is not None:
            self._shared.close()
            self._shared = None

    # -- seeding / inspection (not part of the StatusStore interface) -----------
    def add_business(self, tenant_id: str, owner_id: Any, name: Optional[str] = None) -> dict:
        """Insert a business unless the tenant id exists; returns the stored row."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO businesses (tenant_id, owner_id, name) VALUES (?, ?, ?)",
                (tenant_id, owner_id, name if name is not None else tenant_id),
            )
            row = conn.execute("SELECT * FROM businesses WHERE tenant_id = ?", (tenant_id,)).fetchone()
        return dict(row)

    def businesses(self) -> list:
        with self._read() as conn:
            return [dict(r) for r in conn.execute("SELECT * FROM businesses ORDER BY id")]

    def reminders(self, business_id: Any = None) -> list:
        """Every reminder (open and completed), oldest first, details decoded."""
        sql, args = "SELECT * FROM reminders", ()
        if business_id is not None:
            sql, args = sql + " WHERE business_id = ?", (business_id,)
        with self._read() as conn:
            return [self._reminder(r) for r in conn.execute(sql + " ORDER BY id", args)]

    def statuses(self) -> list:
        with self._read() as conn:
            return [dict(r) for r in conn.execute("SELECT * FROM whatsapp_status ORDER BY business_id")]

    def idempotency_key_count(self) -> int:
        with self._read() as conn:
            return conn.execute("SELECT COUNT(*) FROM idempotency_keys").fetchone()[0]

    @staticmethod
    def _reminder(row: sqlite3.Row) -> dict:
        d = dict(row)
        try:
            d["details"] = json.loads(d["details"]) if d.get("details") else None
        except ValueError:
            pass  # written by someone else as plain text: hand it back as is
        return d

    # -- StatusStore ----------------------------------------------------------------
    def find_business(self, tenant_id: str) -> Optional[dict]:
        with self._read() as conn:
            row = conn.execute("SELECT * FROM businesses WHERE tenant_id = ?", (tenant_id,)).fetchone()
        return dict(row) if row else None

    def open_reminders(self, owner_id: Any, type: str, business_id: Any = None) -> list:
        sql = "SELECT * FROM reminders WHERE owner_id = ? AND type = ? AND status = 'open'"
        args: tuple = (owner_id, type)
        if business_id is not None:
            sql += " AND business_id = ?"
            args += (business_id,)
        with self._read() as conn:
            return [self._reminder(r) for r in conn.execute(sql + " ORDER BY id", args)]

    def list_open_reminders(self, owner_id: Any = None) -> list:
        sql, args = "SELECT * FROM reminders WHERE status = 'open'", ()
        if owner_id is not None:
            sql, args = sql + " AND owner_id = ?", (owner_id,)
        with self._read() as conn:
            return [self._reminder(r) for r in conn.execute(sql + " ORDER BY id DESC", args)]

    def create_reminder(self, *, owner_id, business_id, type, priority, title, message, details) -> dict:
        with self.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO reminders (owner_id, business_id, type, priority, title, message,"
                " details, status, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'open', ?)",
                (owner_id, business_id, type, priority, title, message,
                 json.dumps(details, ensure_ascii=False), utcnow()),
            )
            row = conn.execute("SELECT * FROM reminders WHERE id = ?", (cur.lastrowid,)).fetchone()
        return self._reminder(row)

    def complete_reminders(self, reminder_ids: Sequence[Any]) -> int:
        ids = list(reminder_ids)
        if not ids:
            return 0
        now = utcnow()
        changed = 0
        with self.transaction() as conn:
            for rid in ids:
                changed += conn.execute(
                    "UPDATE reminders SET status = 'completed', completed_at = ?"
                    " WHERE id = ? AND status = 'open'",
                    (now, rid),
                ).rowcount
        return changed

    def seen_idempotency_key(self, key: str) -> Optional[dict]:
        with self._read() as conn:
            row = conn.execute(
                "SELECT status_code, response FROM idempotency_keys WHERE key = ?", (key,)
            ).fetchone()
        if row is None:
            return None
        return {"status": row["status_code"], "body": json.loads(row["response"])}

    def remember_idempotency_key(self, key: str, response: Mapping[str, Any]) -> None:
        now = datetime.now(timezone.utc)
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO idempotency_keys (key, status_code, response, created_at)"
                " VALUES (?, ?, ?, ?)",
                (key, int(response["status"]), json.dumps(response["body"]), _fmt(now)),
            )
            if self.idempotency_ttl:
                conn.execute(
                    "DELETE FROM idempotency_keys WHERE created_at < ?",
                    (_fmt(now - self.idempotency_ttl),),
                )

    def record_status(self, business, status, reason, changed_at) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO whatsapp_status"
                " (business_id, tenant_id, status, reason, changed_at, received_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (business["id"], business["tenant_id"], status, reason, changed_at, utcnow()),
            )


# --------------------------------------------------------------------------- payload


class PayloadError(ValueError):
    pass


def validate_payload(data: Any) -> tuple:
    """Check a decoded body; returns ``(tenant_id, status, reason)`` or raises PayloadError."""
    if not isinstance(data, dict):
        raise PayloadError("body must be a JSON object")
    tenant_id = data.get("tenant_id")
    if not isinstance(tenant_id, str) or not tenant_id.strip():
        raise PayloadError("tenant_id must be a non-empty string")
    if len(tenant_id) > MAX_TENANT_ID_LEN:
        raise PayloadError(f"tenant_id must be at most {MAX_TENANT_ID_LEN} characters")
    status = data.get("status")
    if status not in STATUSES:  # also refuses non-strings
        raise PayloadError('status must be "connected" or "disconnected"')
    reason = data.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise PayloadError("reason must be a string or null")
    if reason is not None and len(reason) > MAX_REASON_LEN:
        reason = reason[: MAX_REASON_LEN - 3] + "..."
    return tenant_id, status, reason


# --------------------------------------------------------------------------- blueprint

SecretSource = Union[str, bytes, Callable[[], Optional[Union[str, bytes]]], None]


def _secret_bytes(secret: SecretSource) -> bytes:
    if callable(secret):
        secret = secret()
    if secret is None:
        secret = current_app.config.get("INTERNAL_SHARED_SECRET")
    if secret is None:
        return b""
    return secret if isinstance(secret, bytes) else str(secret).encode("utf-8")


def _error(status: int, error: str, message: Optional[str] = None) -> tuple:
    body: dict = {"ok": False, "error": error}
    if message:
        body["message"] = message
    return jsonify(body), status


def _reminder_json(r: Mapping[str, Any]) -> dict:
    return {
        "id": r.get("id"),
        "type": r.get("type"),
        "title": r.get("title"),
        "message": r.get("message"),
        "priority": r.get("priority"),
        "created_at": r.get("created_at"),
        "business_id": r.get("business_id"),
        "details": r.get("details"),
    }


def create_blueprint(
    *,
    store: StatusStore,
    secret: SecretSource = None,
    name: str = "wa_status",
    webhook_path: str = WEBHOOK_PATH,
    notifications_path: Optional[str] = NOTIFICATIONS_PATH,
    current_owner: Optional[Callable[[], Any]] = None,
) -> Blueprint:
    """Build the blueprint.

    store:              a :class:`StatusStore` (e.g. ``SqliteStore(path)`` or your own).
    secret:             the shared secret: a string, a callable returning it (read per request,
                        so rotation works), or None to read ``app.config["INTERNAL_SHARED_SECRET"]``.
                        An empty/missing secret refuses every call (401) and logs an error.
    webhook_path:       where the sidecar posts.
    notifications_path: ``GET`` list of open reminders; None to leave it out.
    current_owner:      callable returning the logged-in owner's id for the notifications
                        endpoint (None from it gives 401). Without it the endpoint is the demo
                        one: everything, or ``?owner_id=`` - do not expose that in production.
    """
    bp = Blueprint(name, __name__)

    @bp.post(webhook_path)
    def status_webhook():
        expected = _secret_bytes(secret)
        # WSGI hands headers over as latin-1 decoded text: encoding back gives the bytes on
        # the wire, which for a UTF-8 secret are its UTF-8 bytes.
        given = request.headers.get("X-INTERNAL-SECRET", "").encode("latin-1", "replace")
        if not expected:
            log.error("status webhook: no shared secret configured; refusing the call")
            return _error(401, "unauthorized")
        if not hmac.compare_digest(given, expected):
            log.warning("status webhook: wrong or missing X-INTERNAL-SECRET from %s", request.remote_addr)
            return _error(401, "unauthorized")

        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            return _error(400, "invalid_payload", "body too large")
        raw = request.get_data(cache=False)
        if len(raw) > MAX_BODY_BYTES:
            return _error(400, "invalid_payload", "body too large")
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return _error(400, "invalid_payload", "body must be valid JSON")
        try:
            tenant_id, status, reason = validate_payload(data)
        except PayloadError as e:
            log.warning("status webhook: refused payload: %s", e)
            return _error(400, "invalid_payload", str(e))

        key = request.headers.get("Idempotency-Key", "").strip() or None
        if key is not None and (len(key) > MAX_IDEMPOTENCY_KEY_LEN or not key.isprintable()):
            return _error(400, "invalid_payload", "Idempotency-Key must be at most 255 printable characters")

        changed_at_raw = request.headers.get("X-Status-Changed-At")
        changed_at = None
        if changed_at_raw:
            changed_at = parse_rfc3339(changed_at_raw)
            if changed_at is None:
                log.warning("status webhook: ignoring unparsable X-Status-Changed-At %r", changed_at_raw[:64])

        with store.transaction():
            if key is not None:
                stored = store.seen_idempotency_key(key)
                if stored is not None:
                    log.info("status webhook: replay of Idempotency-Key %r for tenant %r", key, tenant_id)
                    resp = jsonify(stored["body"])
                    resp.status_code = int(stored["status"])
                    resp.headers["Idempotent-Replayed"] = "true"
                    return resp

            body = {"ok": True}
            business = store.find_business(tenant_id)
            if business is None:
                log.warning("status webhook: unknown tenant %r (status %s); ignored", tenant_id, status)
            else:
                _apply(store, business, status, reason, changed_at, key)

            if key is not None:
                store.remember_idempotency_key(key, {"status": 200, "body": body})
        return jsonify(body), 200

    if notifications_path:

        @bp.get(notifications_path)
        def notifications():
            if current_owner is not None:
                owner_id = current_owner()
                if owner_id is None:
                    return _error(401, "unauthorized")
            else:
                owner_id = request.args.get("owner_id") or None
                if owner_id is not None and owner_id.lstrip("-").isdigit():
                    owner_id = int(owner_id)
            items = [_reminder_json(r) for r in store.list_open_reminders(owner_id)]
            return jsonify({"notifications": items, "unread_count": len(items)})

    return bp


def _apply(store: StatusStore, business: Mapping[str, Any], status: str,
           reason: Optional[str], changed_at: Optional[str], key: Optional[str]) -> None:
    owner_id = business["owner_id"]
    business_id = business["id"]
    tenant_id = business.get("tenant_id")
    store.record_status(business, status, reason, changed_at)
    open_ = store.open_reminders(owner_id, REMINDER_TYPE, business_id=business_id)
    if status == "disconnected":
        if open_:
            log.info("status webhook: tenant %r disconnected; reminder %s already open",
                     tenant_id, open_[0].get("id"))
            return
        reminder = store.create_reminder(
            owner_id=owner_id,
            business_id=business_id,
            type=REMINDER_TYPE,
            priority=REMINDER_PRIORITY,
            title=REMINDER_TITLE,
            message=REMINDER_MESSAGE,
            details={
                "tenant_id": tenant_id,
                "reason": reason,
                "status_changed_at": changed_at,
                "idempotency_key": key,
            },
        )
        log.info("status webhook: tenant %r disconnected (%s); reminder %s created",
                 tenant_id, reason, reminder.get("id"))
    else:
        done = store.complete_reminders([r["id"] for r in open_]) if open_ else 0
        log.info("status webhook: tenant %r connected; %d reminder(s) completed", tenant_id, done)

