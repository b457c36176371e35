"""Stripe webhook signature verification, on the raw body, against several secrets (rotation).

Stripe signs ``"{timestamp}.{raw body}"`` with HMAC-SHA256 under the endpoint's signing secret and
sends ``Stripe-Signature: t=<timestamp>,v1=<hex>[,v1=<hex>...]``. A delivery is genuine when any
``v1`` matches under any configured secret and the timestamp is within the tolerance of now.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from datetime import datetime

DEFAULT_TOLERANCE = 300


class SignatureError(Exception):
    """The delivery is not provably from Stripe; the message says why (for logs, not for callers)."""


def sign(payload: bytes, secret: str, timestamp: int) -> str:
    """The ``Stripe-Signature`` header Stripe would send for ``payload`` at ``timestamp``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def verify(
    payload: bytes,
    header: str | None,
    secrets: Sequence[str],
    *,
    now: datetime,
    tolerance: int = DEFAULT_TOLERANCE,
) -> None:
    """Raise :class:`SignatureError` unless ``header`` signs ``payload`` under one of ``secrets``."""
    if not secrets:
        raise SignatureError("no webhook signing secret is configured")
    if not header:
        raise SignatureError("missing Stripe-Signature header")
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError as exc:
                raise SignatureError("malformed timestamp") from exc
        elif key == "v1":
            signatures.append(value)
    if timestamp is None or not signatures:
        raise SignatureError("header has no timestamp or no v1 signature")
    if abs(now.timestamp() - timestamp) > tolerance:
        raise SignatureError("timestamp outside the tolerance")
    signed = f"{timestamp}.".encode() + payload
    for secret in secrets:
        expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
        if any(hmac.compare_digest(expected, candidate) for candidate in signatures):
            return
    raise SignatureError("no signature matches any configured secret")
