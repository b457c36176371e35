"""Signed access tokens: a granting entitlement decision, carried to one content site.

Tollgate issues a token only when a reader may read; the content site verifies it locally, without
a network call, with the token keys of its own API client (never Tollgate's ``SECRET_KEYS``). This
module needs only the standard library and ``itsdangerous``, so a content site written in Python can
copy it or import it on its own. The format is specified, byte by byte and with worked examples,
in the README's "Token format" section; in short::

    KID "." PAYLOAD "." TIMESTAMP "." SIGNATURE

- ``KID`` names the token key that signed it (``tk_`` and 8 base64url characters), so a verifier
  picks that key without trying the others;
- ``PAYLOAD`` is unpadded base64url of compact UTF-8 JSON with the members ``reader_id``,
  ``reason``, ``plan``, ``group_id``, ``until`` (as the API's decision names them), ``client_id``
  (the API client it was issued to) and ``exp`` (unix seconds: refused from that second on);
- ``TIMESTAMP`` is unpadded base64url of the signing time in unix seconds, big-endian, without
  leading zero bytes;
- ``SIGNATURE`` is unpadded base64url of ``HMAC-SHA256(k, KID "." PAYLOAD "." TIMESTAMP)`` with
  ``k = SHA256(b"tollgate.access-token.v2" + b"signer" + secret)``, the secret being the ASCII text
  after the dot of the token key ``tk_XXXXXXXX.<43 characters>`` (itsdangerous's "django-concat"
  key derivation, with SHA-256).

A token key is shown once, when Tollgate creates or rotates it. A client's key set rotates with
overlap: the newest key signs, every key the site lists verifies, and the site drops a key once
Tollgate says it is retired or revoked.

In Python::

    verifier = TokenSigner(["tk_NewKey01.<secret>", "tk_OldKey01.<secret>"], client_id="cli_...")
    claims = verifier.verify(token, now=datetime.now(UTC))   # TokenExpired / TokenInvalid
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from itsdangerous import BadData, TimestampSigner
from itsdangerous.encoding import base64_decode, base64_encode, int_to_bytes

__all__ = [
    "CLOCK_SKEW",
    "DEFAULT_TTL",
    "KID_LENGTH",
    "MAX_TOKEN_LENGTH",
    "SALT",
    "AccessClaims",
    "TokenExpired",
    "TokenForAnotherClient",
    "TokenInvalid",
    "TokenKey",
    "TokenSigner",
    "verify",
]

#: The purpose salt of access tokens (version 2: per-client token keys).
SALT = "tollgate.access-token.v2"

#: How long a token lives unless the decision ends sooner.
DEFAULT_TTL = timedelta(minutes=15)

#: How far in the future a token's signing time may be (clocks of two machines differ).
CLOCK_SKEW = timedelta(seconds=60)

#: Longer strings are refused before any work is done on them.
MAX_TOKEN_LENGTH = 4096

#: ``tk_`` and 8 base64url characters.
KID_LENGTH = 11

_UNTIL_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_STR_OR_NONE = frozenset({str, type(None)})
_KEY_SHAPE = re.compile(r"(tk_[A-Za-z0-9_-]{8})\.([A-Za-z0-9_-]{43})")

# KID "." PAYLOAD "." TIMESTAMP "." SIGNATURE; the last character of a 43-character base64url
# encoding of 32 bytes carries 4 bits of data and 2 zero bits, so only these 16 letters are canonical.
_TOKEN_SHAPE = re.compile(
    r"tk_[A-Za-z0-9_-]{8}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]"
)


class TokenInvalid(Exception):
    """The token is not one of ours: malformed, tampered with, or signed with a key not held.

    Tokens issued to another API client, and tokens signed in the future (beyond
    :data:`CLOCK_SKEW`), are invalid too.
    """


class TokenExpired(TokenInvalid):
    """The token was genuine but its lifetime is over."""


class TokenForAnotherClient(TokenInvalid):
    """The token was issued to another API client: never accept it."""


@dataclass(frozen=True)
class TokenKey:
    """One token key: its public id (``kid``) and its secret, written ``<kid>.<secret>``."""

    kid: str
    secret: str

    @classmethod
    def parse(cls, text: str) -> TokenKey:
        """The key written as ``tk_XXXXXXXX.<43 base64url characters>``; ValueError otherwise."""
        match = _KEY_SHAPE.fullmatch(text.strip()) if isinstance(text, str) else None
        if match is None:
            raise ValueError("a token key looks like tk_XXXXXXXX.<43 base64url characters>")
        return cls(kid=match.group(1), secret=match.group(2))

    @classmethod
    def generate(cls) -> TokenKey:
        """A fresh random key: a 48-bit kid and a 256-bit secret."""
        return cls(kid="tk_" + secrets.token_urlsafe(6), secret=secrets.token_urlsafe(32))

    def __str__(self) -> str:
        return f"{self.kid}.{self.secret}"

    def __repr__(self) -> str:
        return f"TokenKey(kid={self.kid!r}, secret=...)"


@dataclass(frozen=True)
class AccessClaims:
    """What a verified token says: the granting decision, who it was for, and until when."""

    reader_id: str | None
    reason: str
    plan: str | None
    group_id: str | None
    until: datetime | None
    client_id: str
    kid: str
    issued_at: datetime
    expires_at: datetime


class TokenSigner:
    """Issues and verifies one API client's access tokens: the first key signs, all verify."""

    def __init__(
        self,
        keys: Sequence[str | TokenKey],
        *,
        client_id: str,
        ttl: timedelta = DEFAULT_TTL,
    ) -> None:
        if isinstance(keys, str):
            raise TypeError("keys must be a list of token keys, not a single key")
        parsed = [key if isinstance(key, TokenKey) else TokenKey.parse(key) for key in keys]
        if not parsed:
            raise ValueError("at least one token key is needed")
        if not client_id:
            raise ValueError("client_id names the API client the tokens are for")
        if ttl < timedelta(seconds=1):
            raise ValueError("ttl must be at least one second")
        self.client_id = client_id
        self.ttl = ttl
        self.kid = parsed[0].kid
        # One itsdangerous signer per key, found by kid: a token is checked against its own key
        # only. The key derivation ("django-concat") is done here once, not on every call.
        self._signers = {
            key.kid: TimestampSigner(
                _derive_key(key.secret),
                salt=SALT,
                digest_method=hashlib.sha256,
                key_derivation="none",
            )
            for key in reversed(parsed)
        }

    def issue(
        self,
        *,
        reader_id: str | None,
        reason: str,
        plan: str | None,
        group_id: str | None,
        until: datetime | None,
        now: datetime,
    ) -> tuple[str, datetime]:
        """Return a token carrying this granting decision, and the moment it expires.

        The token expires after ``ttl`` or at ``until`` (to the second, never later), whichever
        comes first. A decision that ends before the token could live a second is stale: it raises
        ValueError rather than giving a token that is born expired.
        """
        _require_aware(now, "now")
        expires = now + self.ttl
        if until is not None:
            _require_aware(until, "until")
            expires = min(expires, until)
        exp = int(expires.timestamp())
        if exp <= now.timestamp():
            raise ValueError(f"the decision ends at {expires.isoformat()}; decide again")
        payload = {
            "reader_id": reader_id,
            "reason": reason,
            "plan": plan,
            "group_id": group_id,
            "until": None if until is None else until.astimezone(UTC).strftime(_UNTIL_FORMAT),
            "client_id": self.client_id,
            "exp": exp,
        }
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        signed = b".".join(
            (
                self.kid.encode("ascii"),
                base64_encode(body),
                base64_encode(int_to_bytes(int(now.timestamp()))),
            )
        )
        token = signed + b"." + self._signers[self.kid].get_signature(signed)
        return token.decode("ascii"), datetime.fromtimestamp(exp, UTC)

    def verify(
        self, token: str, *, now: datetime, max_age: timedelta | None = None
    ) -> AccessClaims:
        """Return the claims of a genuine, unexpired token issued to this client.

        Raises TokenExpired when ``now`` is at or past the token's ``exp`` (or the token is older
        than ``max_age``, when given), and TokenInvalid for anything else that is wrong with it.
        """
        _require_aware(now, "now")
        if len(token) > MAX_TOKEN_LENGTH or not _TOKEN_SHAPE.fullmatch(token):
            raise TokenInvalid("malformed token")
        kid = token[:KID_LENGTH]
        signer = self._signers.get(kid)
        if signer is None:
            raise TokenInvalid(f"signed with {kid}, a key this verifier does not hold")
        try:
            value, issued_at = signer.unsign(token, return_timestamp=True)
            payload = json.loads(base64_decode(value[KID_LENGTH + 1 :]).decode("utf-8"))
        except (BadData, ValueError) as exc:
            raise TokenInvalid("bad signature or payload") from exc
        if issued_at > now + CLOCK_SKEW:
            raise TokenInvalid("token signed in the future")
        claims = _claims_from_payload(payload, kid, issued_at)
        if claims.client_id != self.client_id:
            raise TokenForAnotherClient("token issued to another API client")
        if now >= claims.expires_at:
            raise TokenExpired(f"token expired at {claims.expires_at.isoformat()}")
        if max_age is not None and now - issued_at > max_age:
            raise TokenExpired(f"token older than {max_age}")
        return claims


def verify(
    token: str,
    keys: Sequence[str | TokenKey],
    *,
    client_id: str,
    now: datetime | None = None,
    max_age: timedelta | None = None,
) -> AccessClaims:
    """Return the claims of a genuine, unexpired token; ``now`` defaults to the wall clock.

    For content sites that verify one token now and then; on a hot path, keep a TokenSigner.
    Raises TokenExpired or TokenInvalid like :meth:`TokenSigner.verify`.
    """
    if now is None:
        now = datetime.now(UTC)
    return TokenSigner(keys, client_id=client_id).verify(token, now=now, max_age=max_age)


def _claims_from_payload(payload: Any, kid: str, issued_at: datetime) -> AccessClaims:
    """Build the claims from a decoded payload, refusing one of the wrong shape."""
    try:
        reader_id = payload["reader_id"]
        reason = payload["reason"]
        plan = payload["plan"]
        group_id = payload["group_id"]
        until = payload["until"]
        client_id = payload["client_id"]
        exp = payload["exp"]
    except (KeyError, TypeError) as exc:
        raise TokenInvalid("payload has the wrong shape") from exc
    if not (
        type(reason) is str
        and type(client_id) is str
        and type(exp) is int
        and type(reader_id) in _STR_OR_NONE
        and type(plan) in _STR_OR_NONE
        and type(group_id) in _STR_OR_NONE
        and type(until) in _STR_OR_NONE
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
        reason=reason,
        plan=plan,
        group_id=group_id,
        until=until_at,
        client_id=client_id,
        kid=kid,
        issued_at=issued_at,
        expires_at=expires_at,
    )


def _derive_key(secret: str) -> bytes:
    """The HMAC key for a token key's secret: "django-concat" with SHA-256."""
    return hashlib.sha256(SALT.encode("ascii") + b"signer" + secret.encode("ascii")).digest()


def _require_aware(value: datetime, name: str) -> None:
    """Refuse a naive datetime: its meaning depends on the machine's time zone."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")
