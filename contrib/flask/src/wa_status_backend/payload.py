"""The webhook body: parsed as hostile input, checked against SPEC section 2.

Body: ``{"tenant_id": "business_1", "status": "connected" | "disconnected", "reason": str | null}``.
Whatever arrives (a nesting bomb, invalid UTF-8, lone surrogates, a 10,000-digit number) ends in a
:class:`PayloadError` (400), never in an exception the app answers with 500.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timezone
from typing import Any, NamedTuple, Optional

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_DEPTH",
    "PayloadError",
    "StatusChange",
    "parse_body",
    "validate_payload",
    "parse_rfc3339",
]

MAX_BODY_BYTES = 64 * 1024
# The body is one flat object; a little headroom for senders that add a nested field.
MAX_DEPTH = 16
MAX_TENANT_ID_LEN = 255
MAX_REASON_LEN = 2000
STATUSES = ("connected", "disconnected")
# Unicode's control characters (category Cc): C0, DEL and C1. A NUL cannot be stored in a
# PostgreSQL text column (the insert fails, the call would be a 500 retried forever) and a line
# break or an escape has no place in a one-line, human-readable reason; the sidecar turns them into
# spaces before it sends. Format characters (a right-to-left mark in a Hebrew reason) are kept.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class PayloadError(ValueError):
    """A body the backend refuses (400); the message says why and is safe to answer."""


class StatusChange(NamedTuple):
    tenant_id: str
    status: str
    reason: Optional[str]
    # sha256 of the canonical (tenant_id, status, full reason): what an Idempotency-Key binds to.
    fingerprint: str


def _nesting_depth_exceeds(raw: bytes, limit: int) -> bool:
    """True when brackets outside strings nest deeper than ``limit``: checked before the
    decoder sees the body, so ``[[[[...`` costs one linear scan and no recursion."""
    depth = 0
    in_string = False
    escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return False


def _reject_constant(name: str) -> Any:
    raise PayloadError(f"body must be valid JSON ({name} is not JSON)")


def parse_body(raw: bytes) -> Any:
    """Decodes a JSON body of at most :data:`MAX_BODY_BYTES`; raises PayloadError."""
    if len(raw) > MAX_BODY_BYTES:
        raise PayloadError(f"body too large (at most {MAX_BODY_BYTES} bytes)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PayloadError("body must be UTF-8 JSON") from None
    if _nesting_depth_exceeds(raw, MAX_DEPTH):
        raise PayloadError(f"body nests deeper than {MAX_DEPTH} levels")
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except PayloadError:
        raise
    except (ValueError, RecursionError):
        # ValueError also covers integers past Python's digit limit.
        raise PayloadError("body must be valid JSON") from None


def _storable(value: str) -> bool:
    """A lone surrogate (``"\\ud800"``) decodes fine but cannot be stored as UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def validate_payload(data: Any) -> StatusChange:
    """Checks a decoded body; raises PayloadError naming the first problem."""
    if not isinstance(data, dict):
        raise PayloadError("body must be a JSON object")
    tenant_id = data.get("tenant_id")
    if not isinstance(tenant_id, str) or not tenant_id.strip():
        raise PayloadError("tenant_id must be a non-empty string")
    if len(tenant_id) > MAX_TENANT_ID_LEN:
        raise PayloadError(f"tenant_id must be at most {MAX_TENANT_ID_LEN} characters")
    if not tenant_id.isprintable() or not _storable(tenant_id):
        raise PayloadError("tenant_id must not hold control characters or invalid Unicode")
    status = data.get("status")
    if not isinstance(status, str) or status not in STATUSES:
        raise PayloadError('status must be "connected" or "disconnected"')
    reason = data.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise PayloadError("reason must be a string or null")
    if reason is not None and not _storable(reason):
        raise PayloadError("reason must be valid Unicode")
    if reason is not None and _CONTROL.search(reason):
        raise PayloadError("reason must not hold control characters (NUL, line breaks, tabs, escapes): "
                           "send one line of text, with spaces in their place")
    canonical = json.dumps([tenant_id, status, reason], ensure_ascii=False, separators=(",", ":"))
    fingerprint = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    if reason is not None and len(reason) > MAX_REASON_LEN:
        reason = reason[: MAX_REASON_LEN - 3] + "..."
    return StatusChange(tenant_id, status, reason, fingerprint)


def parse_rfc3339(value: str) -> Optional[datetime]:
    """An RFC 3339 timestamp as naive UTC; None if unparsable or without an offset."""
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
    try:
        return dt.astimezone(timezone.utc).replace(tzinfo=None)
    except (OverflowError, ValueError):
        return None
