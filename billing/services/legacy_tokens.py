"""Access tokens of the old form, accepted by ``POST /api/v1/entitlement/check`` until they expire.

Before token keys of their own, tokens were ``PAYLOAD "." TIMESTAMP "." SIGNATURE`` signed with
``SECRET_KEYS`` under the salt ``tollgate.access-token.v1`` (payload members ``reader_id``,
``granted``, ``reason``, ``plan``, ``group``, ``until``, ``client_id``, ``exp``). Tollgate no
longer issues them, so the last one expires ``ACCESS_TOKEN_TTL`` after the upgrade. The rule here:

- an old-form token is accepted only while ``now < exp``, only when it lived no longer than
  ``ACCESS_TOKEN_TTL`` (``exp - signed at``: no genuine one did), only for the API client it
  names, and never at or after :data:`ACCEPTED_UNTIL`, whatever it says;
- :data:`ACCEPTED_UNTIL` is the cut-over: the release that introduced token keys was deployed
  before it, so every old-form token ever issued has expired by then. The first release after
  that date deletes this module and the branch of the check that calls it.

Content sites never accept this form: their verifier (``tokens.py``) knows only token keys.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from itsdangerous import BadData, TimestampSigner
from itsdangerous.encoding import base64_decode

from billing.services.tokens import (
    CLOCK_SKEW,
    TokenExpired,
    TokenForAnotherClient,
    TokenInvalid,
)

SALT = "tollgate.access-token.v1"
ACCEPTED_UNTIL = datetime(2027, 1, 31, tzinfo=UTC)
"""No old-form token is accepted at or after this moment (the cut-over; see the module docs)."""

_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]")
_MAX_LENGTH = 4096


@dataclass(frozen=True)
class LegacyClaims:
    """What an old-form token says; unlike a new one it may carry a refusal."""

    reader_id: str | None
    granted: bool
    reason: str
    plan: str | None
    group_id: str | None
    until: datetime | None


def looks_legacy(token: str) -> bool:
    """Whether ``token`` has the old form's shape (three parts, no ``tk_`` key id)."""
    return len(token) <= _MAX_LENGTH and _SHAPE.fullmatch(token) is not None


def verify(
    token: str,
    secret_keys: Sequence[str],
    *,
    client_id: str,
    now: datetime,
    max_lifetime: timedelta,
) -> LegacyClaims:
    """The claims of a genuine old-form token for ``client_id`` that the rule above accepts.

    Raises TokenExpired past its ``exp`` or the cut-over, TokenInvalid for anything else.
    """
    if now >= ACCEPTED_UNTIL:
        raise TokenExpired(f"old-form tokens are refused since {ACCEPTED_UNTIL.isoformat()}")
    if not looks_legacy(token):
        raise TokenInvalid("malformed token")
    keys = [
        hashlib.sha256(SALT.encode("ascii") + b"signer" + secret.encode("utf-8")).digest()
        for secret in secret_keys
    ]
    signer = TimestampSigner(keys, salt=SALT, digest_method=hashlib.sha256, key_derivation="none")
    try:
        body, signed_at = signer.unsign(token, return_timestamp=True)
        payload = json.loads(base64_decode(body).decode("utf-8"))
    except (BadData, ValueError) as exc:
        raise TokenInvalid("bad signature or payload") from exc
    if not isinstance(payload, dict) or type(payload.get("exp")) is not int:
        raise TokenInvalid("payload has the wrong shape")
    if signed_at > now + CLOCK_SKEW:
        raise TokenInvalid("token signed in the future")
    if payload["exp"] - signed_at.timestamp() > max_lifetime.total_seconds():
        raise TokenInvalid("an old-form token never lived this long")
    if payload.get("client_id") != client_id:
        raise TokenForAnotherClient("token issued to another API client")
    if now.timestamp() >= payload["exp"]:
        raise TokenExpired("token expired")
    return _claims(payload)


def _claims(payload: dict[str, object]) -> LegacyClaims:
    """The claims of a verified payload; TokenInvalid when a member has the wrong type."""
    reason, granted, until = payload.get("reason"), payload.get("granted"), _text(payload, "until")
    if not isinstance(reason, str) or not isinstance(granted, bool):
        raise TokenInvalid("payload has the wrong shape")
    try:
        until_at = None if until is None else datetime.fromisoformat(until)
    except ValueError as exc:
        raise TokenInvalid("payload has the wrong shape") from exc
    return LegacyClaims(
        reader_id=_text(payload, "reader_id"),
        granted=granted,
        reason=reason,
        plan=_text(payload, "plan"),
        group_id=_text(payload, "group"),
        until=until_at,
    )


def _text(payload: dict[str, object], name: str) -> str | None:
    """The string or null member ``name``; TokenInvalid for any other type."""
    value = payload.get(name)
    if value is not None and not isinstance(value, str):
        raise TokenInvalid("payload has the wrong shape")
    return value
