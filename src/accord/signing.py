"""The one HMAC signature scheme of Accord's outgoing HTTP calls.

Ledger webhook sinks, webhook provisioning targets and webhook notifications all send
`X-Accord-Timestamp: <unix seconds>` and
`X-Accord-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + raw body)>`.
Receivers check it with `verify`, which also refuses stale or future timestamps.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-Accord-Signature"
TIMESTAMP_HEADER = "X-Accord-Timestamp"
MAX_AGE = 300  # seconds a signed request stays acceptable to a receiver


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The signature header value for `body` sent at `timestamp`."""
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def headers(secret: bytes, body: bytes) -> dict[str, str]:
    """Both headers for `body`, signed now."""
    stamp = str(int(time.time()))
    return {TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: sign(secret, stamp, body)}


def verify(secret: bytes, timestamp: str, body: bytes, header: str,
           now: float | None = None, max_age: int = MAX_AGE) -> bool:
    """For receivers: is `header` Accord's signature of `body`, made within `max_age` s?"""
    try:
        stamp = int(timestamp)
    except (TypeError, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - stamp) > max_age:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body).encode(),
                               str(header).strip().encode())
