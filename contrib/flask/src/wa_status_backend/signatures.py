"""Standard Webhooks signatures (SPEC section 2), verified with the standard library only.

A signed call carries three headers::

    webhook-id:        the event's id (the sidecar sends its Idempotency-Key)
    webhook-timestamp: Unix seconds of this attempt
    webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body"> [v1,<...> ...]

A secret is written ``whsec_<base64>``; the HMAC key is the decoded bytes, so any Standard Webhooks
library produces and accepts the same signatures. Several signatures may be sent (one per secret
the sender holds, space-separated) and several secrets may be configured here: a call is genuine
when any signature matches any secret, which lets either side rotate without downtime.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re
import time
from typing import Iterable, Mapping, Optional, Sequence, Union

__all__ = [
    "TOLERANCE_SECONDS",
    "SignatureError",
    "parse_secret",
    "parse_secrets",
    "sign",
    "verify",
]

# Standard Webhooks' replay window: an attempt more than 5 minutes old or ahead is refused.
TOLERANCE_SECONDS = 5 * 60
SECRET_PREFIX = "whsec_"
# A header with more entries than this is not a rotation, it is an attempt to burn CPU.
MAX_SIGNATURES = 16
MAX_ID_LEN = 255
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


class SignatureError(Exception):
    """Why a call's signature was not accepted; the message is safe to log and to answer."""


def parse_secret(secret: str) -> bytes:
    """The HMAC key of one ``whsec_<base64>`` secret. Raises ValueError (never echoing it)."""
    if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX):
        raise ValueError("a webhook signing secret must be written whsec_<base64>")
    body = secret[len(SECRET_PREFIX):]
    # Standard Webhooks' own libraries accept the base64 with or without its padding.
    padded = body + "=" * (-len(body) % 4)
    if not body or not _BASE64.fullmatch(padded):
        raise ValueError("a webhook signing secret must be written whsec_<base64>: the part after whsec_ is not base64")
    try:
        key = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a webhook signing secret must be written whsec_<base64>: the part after whsec_ is not base64") from None
    if not key:
        raise ValueError("a webhook signing secret must not be empty")
    return key


def parse_secrets(secrets: Union[str, Iterable[str], None]) -> list:
    """Keys from a whitespace-separated string or a list of ``whsec_`` secrets."""
    if secrets is None:
        return []
    items = secrets.split() if isinstance(secrets, str) else [s for s in secrets]
    return [parse_secret(s.strip() if isinstance(s, str) else s) for s in items if s != ""]


def sign(key: bytes, msg_id: str, timestamp: Union[int, str], body: bytes) -> str:
    """``v1,<base64>`` for one key: what a sender puts in ``webhook-signature``."""
    content = f"{msg_id}.{timestamp}.".encode("utf-8") + body
    return "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode("ascii")


def verify(
    keys: Sequence[bytes],
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: Optional[float] = None,
    tolerance: int = TOLERANCE_SECONDS,
) -> str:
    """Checks a call's ``webhook-*`` headers against the raw body; returns the webhook id.

    ``headers`` is looked up case-insensitively by the caller's mapping (Werkzeug's is). Every
    configured key is tried against every ``v1`` signature, with a constant-time comparison.
    Raises :class:`SignatureError` naming what was wrong (never a secret).
    """
    if not keys:
        raise SignatureError("no signing secret is configured")
    msg_id = headers.get("webhook-id") or ""
    stamp = headers.get("webhook-timestamp") or ""
    given = headers.get("webhook-signature") or ""
    if not (msg_id and stamp and given):
        raise SignatureError("unsigned call: webhook-id, webhook-timestamp and webhook-signature are required")
    if len(msg_id) > MAX_ID_LEN or not msg_id.isprintable() or not msg_id.isascii():
        raise SignatureError(f"webhook-id must be at most {MAX_ID_LEN} printable ASCII characters")
    if not _TIMESTAMP.fullmatch(stamp):
        raise SignatureError("webhook-timestamp must be Unix seconds")
    current = time.time() if now is None else now
    age = current - int(stamp)
    if age > tolerance:
        raise SignatureError(f"webhook-timestamp is {math.ceil(age)}s old (tolerance {tolerance}s): a replay or a wrong clock")
    if -age > tolerance:
        raise SignatureError(f"webhook-timestamp is {math.ceil(-age)}s ahead (tolerance {tolerance}s): a wrong clock")

    candidates = []
    for entry in given.split()[: MAX_SIGNATURES]:
        version, sep, value = entry.partition(",")
        if version != "v1" or not sep:
            continue  # v1a (asymmetric) or a future scheme: not ours to judge
        try:
            candidates.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            continue
    if not candidates:
        raise SignatureError("webhook-signature holds no v1 signature")

    content = f"{msg_id}.{stamp}.".encode("ascii") + body
    matched = False
    for key in keys:
        expected = hmac.new(key, content, hashlib.sha256).digest()
        for candidate in candidates:
            # No early exit: the time taken does not say which key or entry matched.
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise SignatureError("no webhook-signature matches a configured signing secret")
    return msg_id
