"""Signed access tokens: Tollgate's entitlement decision, carried to the content site.

Tollgate issues a token; the content site verifies it locally, without a network call. This module
needs only the standard library and ``itsdangerous``, so a content site written in Python can copy
it or import it on its own. Sites in other languages verify tokens by following the format below.

Token format
============

A token is an ASCII string of three parts joined by ``.``::

    PAYLOAD "." TIMESTAMP "." SIGNATURE

``b64(x)`` below means base64url (RFC 4648 section 5: ``A-Z a-z 0-9 - _``) without ``=`` padding.

PAYLOAD
    ``b64(json)`` where ``json`` is a JSON object encoded as UTF-8 (compact, non-ASCII characters
    written as-is). Its members are::

        reader_id  string or null   the reader's public id (null: anonymous, by office IP range)
        granted    true or false    may this reader read paywalled content?
        reason     string           why (e.g. "subscription", "trial", "group_ip"; or a refusal)
        plan       string or null   the plan the access comes from
        group      string or null   the group the access comes from
        until      string or null   end of the entitlement, "YYYY-MM-DDTHH:MM:SSZ" (UTC, seconds)
        client_id  string or null   the API client the token was issued for
        exp        integer          expiry, unix seconds: the token is invalid from this second on

    Tollgate never compresses the payload. (itsdangerous writes a compressed payload as ``.``
    followed by b64 of zlib data; a token starting with ``.`` is not a Tollgate token: reject it.)

TIMESTAMP
    ``b64(n)`` where ``n`` is the moment of signing in unix seconds, as an unsigned big-endian
    integer with its leading zero bytes removed (4 bytes until the year 2106, so 6 characters).

SIGNATURE
    ``b64(HMAC-SHA256(key, PAYLOAD "." TIMESTAMP))``: the MAC of the ASCII text of the first two
    parts and the dot between them, exactly as they appear in the token. Always 43 characters.

    ``key = SHA256(salt + b"signer" + secret)``, the raw 32-byte digest of the byte concatenation
    of the salt ``b"tollgate.access-token.v1"``, the 6 bytes ``b"signer"`` and the secret (UTF-8).
    This is itsdangerous's "django-concat" key derivation, with SHA-256 as the digest.

To verify a token:

1. Split it at its two dots into PAYLOAD, TIMESTAMP and SIGNATURE (base64url has no dots, so a
   token with more or fewer parts is invalid, as is one with a character outside ASCII).
2. For each configured secret (any of them may have signed it), derive its key, compute
   ``b64(HMAC-SHA256(key, PAYLOAD "." TIMESTAMP))`` and compare it with SIGNATURE as strings, in
   constant time. Comparing the encoded strings also rejects a signature whose last character was
   swapped for another one that decodes to the same bytes. If no secret matches, it is invalid.
3. Decode TIMESTAMP; if it is more than 60 seconds after your current time, the token is invalid.
4. Decode PAYLOAD as JSON; if the current unix time is at or past ``exp``, the token has expired.

A token lives 15 minutes (configurable): ``exp`` is the signing time plus that, in whole seconds,
or a granted decision's ``until`` if sooner. A refusal (``granted`` false) is issued as a token
too, so the content site knows why; its ``until`` does not shorten its life.

Secrets rotate without logging anyone out: the first secret in the list signs, all of them verify.
Put the new secret first and keep the old one after it until tokens signed with it have expired.

The token is signed, not encrypted: anyone holding it can read the payload.

In Python (the same check as the steps above, with the same secrets as Tollgate's)::

    signer = TokenSigner(["new-secret", "old-secret"])      # build once, reuse
    claims = signer.verify(token, now=datetime.now(UTC))   # TokenExpired / TokenInvalid
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from itsdangerous import BadData, TimestampSigner
from itsdangerous.encoding import base64_decode, base64_encode, int_to_bytes

__all__ = [
    "CLOCK_SKEW",
    "DEFAULT_TTL",
    "MAX_TOKEN_LENGTH",
    "SALT",
    "AccessClaims",
    "TokenExpired",
    "TokenInvalid",
    "TokenSigner",
    "verify",
]

#: The purpose salt: tokens signed with the same secret for another purpose do not verify here.
SALT = "tollgate.access-token.v1"

#: How long a token lives unless the decision ends sooner.
DEFAULT_TTL = timedelta(minutes=15)

#: How far in the future a token's signing time may be (clocks of two machines differ).
CLOCK_SKEW = timedelta(seconds=60)

#: Longer strings are refused before any work is done on them.
MAX_TOKEN_LENGTH = 4096

_UNTIL_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_STR_OR_NONE = frozenset({str, type(None)})

# PAYLOAD "." TIMESTAMP "." SIGNATURE; the last character of a 43-character base64url encoding of
# 32 bytes carries 4 bits of data and 2 zero bits, so only these 16 letters are canonical.
_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]")


class TokenInvalid(Exception):
    """The token is not one of ours: malformed, tampered with, or signed with another key or salt.

    Tokens signed in the future (beyond :data:`CLOCK_SKEW`) are invalid too.
    """


class TokenExpired(TokenInvalid):
    """The token was genuine but its lifetime is over."""


@dataclass(frozen=True)
class AccessClaims:
    """What a verified token says: the entitlement decision, who it was for, and until when."""

    reader_id: str | None
    granted: bool
    reason: str
    plan: str | None
    group: str | None
    until: datetime | None
    client_id: str | None
    issued_at: datetime
    expires_at: datetime


class TokenSigner:
    """Issues and verifies access tokens with a list of secrets: the first signs, all verify."""

    def __init__(self, secrets: Sequence[str | bytes], *, ttl: timedelta = DEFAULT_TTL) -> None:
        if isinstance(secrets, str | bytes):
            raise TypeError("secrets must be a list of secrets, not a single secret")
        keys = [secret.encode("utf-8") if isinstance(secret, str) else secret for secret in secrets]
        if not keys or not all(keys):
            raise ValueError("at least one secret is needed, and no secret may be empty")
        if ttl < timedelta(seconds=1):
            raise ValueError("ttl must be at least one second")
        self.ttl = ttl
        # The signer inside URLSafeTimedSerializer(keys, salt=SALT, signer_kwargs={"digest_method":
        # sha256}), used directly so that it signs a given moment instead of reading the clock.
        # It signs with the last key of its list and verifies with any of them. Its key derivation,
        # "django-concat", is done here once instead of on every call.
        self._signer = TimestampSigner(
            [_derive_key(key) for key in reversed(keys)],
            salt=SALT,
            digest_method=hashlib.sha256,
            key_derivation="none",
        )

    def issue(
        self,
        *,
        reader_id: str | None,
        granted: bool,
        reason: str,
        plan: str | None,
        group: str | None,
        until: datetime | None,
        client_id: str | None,
        now: datetime,
    ) -> tuple[str, datetime]:
        """Return a token carrying this decision, and the moment it expires.

        A granted decision's token expires after ``ttl`` or at ``until`` (to the second, never
        later), whichever comes first. A refusal's token lives for ``ttl`` whatever its ``until``
        says. A granted decision that ends before the token could live a second is stale: it
        raises ValueError rather than giving a token that is born expired.
        """
        _require_aware(now, "now")
        if until is not None:
            _require_aware(until, "until")
        expires = now + self.ttl
        if granted and until is not None:
            expires = min(expires, until)
        exp = int(expires.timestamp())
        if exp <= now.timestamp():
            raise ValueError(f"the decision ends at {expires.isoformat()}; decide again")
        payload = {
            "reader_id": reader_id,
            "granted": granted,
            "reason": reason,
            "plan": plan,
            "group": group,
            "until": None if until is None else until.astimezone(UTC).strftime(_UNTIL_FORMAT),
            "client_id": client_id,
            "exp": exp,
        }
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        signed = base64_encode(body) + b"." + base64_encode(int_to_bytes(int(now.timestamp())))
        token = signed + b"." + self._signer.get_signature(signed)
        return token.decode("ascii"), datetime.fromtimestamp(exp, UTC)

    def verify(
        self, token: str, *, now: datetime, max_age: timedelta | None = None
    ) -> AccessClaims:
        """Return the claims of a genuine, unexpired token.

        Raises TokenExpired when ``now`` is at or past the token's expiry (or the token is older
        than ``max_age``, when given), and TokenInvalid for anything else that is wrong with it.
        """
        _require_aware(now, "now")
        if len(token) > MAX_TOKEN_LENGTH or not _TOKEN_SHAPE.fullmatch(token):
            raise TokenInvalid("malformed token")
        try:
            body, issued_at = self._signer.unsign(token, return_timestamp=True)
            payload = json.loads(base64_decode(body).decode("utf-8"))
        except (BadData, ValueError) as exc:
            raise TokenInvalid("bad signature or payload") from exc
        if issued_at > now + CLOCK_SKEW:
            raise TokenInvalid("token signed in the future")
        claims = _claims_from_payload(payload, issued_at)
        if now >= claims.expires_at:
            raise TokenExpired(f"token expired at {claims.expires_at.isoformat()}")
        if max_age is not None and now - issued_at > max_age:
            raise TokenExpired(f"token older than {max_age}")
        return claims


def verify(
    token: str,
    secrets: Sequence[str | bytes],
    *,
    now: datetime | None = None,
    max_age: timedelta | None = None,
) -> AccessClaims:
    """Return the claims of a genuine, unexpired token; ``now`` defaults to the wall clock.

    For content sites that verify one token now and then; on a hot path, keep a TokenSigner.
    Raises TokenExpired or TokenInvalid like :meth:`TokenSigner.verify`.
    """
    if now is None:
        now = datetime.now(UTC)
    return TokenSigner(secrets).verify(token, now=now, max_age=max_age)


def _claims_from_payload(payload: Any, issued_at: datetime) -> AccessClaims:
    """Build the claims from a decoded payload, refusing one of the wrong shape."""
    try:
        reader_id = payload["reader_id"]
        granted = payload["granted"]
        reason = payload["reason"]
        plan = payload["plan"]
        group = payload["group"]
        until = payload["until"]
        client_id = payload["client_id"]
        exp = payload["exp"]
    except (KeyError, TypeError) as exc:
        raise TokenInvalid("payload has the wrong shape") from exc
    if not (
        type(granted) is bool
        and type(reason) is str
        and type(exp) is int
        and type(reader_id) in _STR_OR_NONE
        and type(plan) in _STR_OR_NONE
        and type(group) in _STR_OR_NONE
        and type(until) in _STR_OR_NONE
        and type(client_id) in _STR_OR_NONE
    ):
        raise TokenInvalid("payload has the wrong shape")
    try:
        until_at = None if until is None else datetime.fromisoformat(until)
        expires_at = datetime.fromtimestamp(exp, UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise TokenInvalid("payload has the wrong shape") from exc
    if until_at is not None and until_at.tzinfo is None:
        raise TokenInvalid("payload has the wrong shape")
    return AccessClaims(
        reader_id=reader_id,
        granted=granted,
        reason=reason,
        plan=plan,
        group=group,
        until=until_at,
        client_id=client_id,
        issued_at=issued_at,
        expires_at=expires_at,
    )


def _derive_key(secret: bytes) -> bytes:
    """The HMAC key for a secret: itsdangerous's "django-concat" derivation, with SHA-256."""
    return hashlib.sha256(SALT.encode("ascii") + b"signer" + secret).digest()


def _require_aware(value: datetime, name: str) -> None:
    """Refuse a naive datetime: its meaning depends on the machine's time zone."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")
