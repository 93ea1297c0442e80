"""Backend side of wa-status-sidecar, for Flask apps on SQLAlchemy.

``init_app(app, ...)`` registers two routes:

- ``POST /api/internal/whatsapp/status-webhook``: the sidecar's call (SPEC section 2). Checks
  ``X-INTERNAL-SECRET`` and, when signing secrets are configured, the Standard Webhooks signature;
  binds each ``Idempotency-Key`` to its payload (a replay gets the stored answer, another payload
  409). ``disconnected`` opens one high-priority ``system_whatsapp_disconnect`` reminder for the
  business, in its language (Hebrew by default); ``connected`` completes it.
- ``GET /api/notifications``: the bell's list, for the logged-in business only (the app's own
  login decides; no login is 401): ``{"notifications": [{"id", "type", "priority", "title",
  "note", "created_at", "lang"}], "unread_count": N}``, as UTF-8.

Layout: :mod:`.extension` (the routes), :mod:`.models` (SQLAlchemy models and the mapping onto an
app's ``CRMReminder``), :mod:`.payload` (the body as hostile input), :mod:`.signatures` (Standard
Webhooks), :mod:`.catalogue` (the bell's texts).
"""

from __future__ import annotations

from .catalogue import DEFAULT_LOCALE, Catalogue, Texts, load_catalogue
from .extension import MIN_IDEMPOTENCY_TTL, NOTIFICATIONS_PATH, WEBHOOK_PATH, WaStatus, init_app
from .models import (
    REMINDER_PRIORITY,
    REMINDER_TYPE,
    Base,
    IdempotencyKey,
    Reminder,
    ReminderInfo,
    ReminderMapping,
    TenantStatus,
    create_tables,
    metadata,
    sqlite_begin_immediate,
)
from .payload import MAX_BODY_BYTES, PayloadError, StatusChange, parse_body, validate_payload
from .signatures import SignatureError, parse_secret, parse_secrets, sign, verify

__version__ = "0.2.0"

__all__ = [
    "init_app",
    "WaStatus",
    "ReminderMapping",
    "Reminder",
    "IdempotencyKey",
    "TenantStatus",
    "ReminderInfo",
    "Base",
    "metadata",
    "create_tables",
    "sqlite_begin_immediate",
    "Catalogue",
    "Texts",
    "load_catalogue",
    "DEFAULT_LOCALE",
    "REMINDER_TYPE",
    "REMINDER_PRIORITY",
    "WEBHOOK_PATH",
    "NOTIFICATIONS_PATH",
    "MIN_IDEMPOTENCY_TTL",
    "MAX_BODY_BYTES",
    "PayloadError",
    "StatusChange",
    "parse_body",
    "validate_payload",
    "SignatureError",
    "parse_secret",
    "parse_secrets",
    "sign",
    "verify",
]
