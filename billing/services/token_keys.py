"""Token keys: each API client's own key set for signing access tokens, and nothing else.

Why keys of their own
=====================

The content site must hold the key that verifies its tokens (an HMAC is symmetric), so that key
must open nothing else in Tollgate: not sessions, not e-mail links, not another client's tokens.
Each API client therefore has its own random token keys, unrelated to ``SECRET_KEYS``; every other
purpose keeps its own salt over ``SECRET_KEYS``.

Life of a key
=============

A key is created with its client and by each rotation, and shown once (``tk_XXXXXXXX.<secret>``).
At any moment a key is (see :class:`~billing.models.TokenKeyState`):

- *pending* until its signing time (``signs_from``): it already verifies, so the site can install
  it before it signs;
- *signing* when it is the client's newest key whose signing time has come;
- *verifying* when a newer key signs but it has not retired yet (tokens it signed stay good);
- *retired* from ``retires_at`` on, *revoked* from ``revoked_at`` on: it verifies nothing.

:func:`rotate` adds a key that signs from ``now + signs_in`` and retires every earlier key
``retire_after`` that moment. :func:`revoke` ends one key at once.

Storage
=======

Tollgate must sign, so it keeps each secret, wrapped: AES-256-GCM under a key derived with
HKDF-SHA256 (info ``tollgate.token-key-wrap.v1``) from a secret of ``TOKEN_KEY_WRAPPING_SECRETS``,
with the key's kid as associated data, stored as ``v1.<wrapping key fingerprint>.<base64url(nonce
|| ciphertext)>``. A copy of the database alone reveals no token key. The first wrapping secret
wraps, all of them unwrap; ``billing api-client rewrap-token-keys`` re-wraps with the first, after
which an old wrapping secret can be dropped.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session, object_session

from billing.errors import Conflict, DomainError, NotFound, ValidationFailed
from billing.models import ApiClient, TokenKey, TokenKeyState
from billing.services import tokens

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

WRAP_INFO = b"tollgate.token-key-wrap.v1"
MAX_SIGNS_IN = timedelta(days=30)
MAX_RETIRE_AFTER = timedelta(days=90)
DEFAULT_RETIRE_AFTER = timedelta(hours=1)
"""How long earlier keys keep verifying after the new key starts signing, unless chosen."""


class NoTokenKey(Conflict):
    """The client has no key that signs now (all revoked or retired, or the first one pending)."""

    code = "no_token_key"


class TokenKeyUnavailable(DomainError):
    """A stored key cannot be unwrapped: ``TOKEN_KEY_WRAPPING_SECRETS`` lacks the secret it needs."""

    status = 503
    code = "token_key_unavailable"


class ClientRef(Protocol):
    """The two things about an API client this module needs (an ORM row or a cached client)."""

    @property
    def id(self) -> int:
        """The client's primary key."""

    @property
    def public_id(self) -> str:
        """The client's public id, named in its tokens."""


class KeyWrapper:
    """Wraps token key secrets for storage: the first wrapping secret wraps, all unwrap.

    The wrapping keys are derived on first use, so ``cryptography`` is imported only by a process
    that wraps or unwraps a key (not by every one that builds the app)."""

    def __init__(self, wrapping_secrets: Sequence[str]) -> None:
        if isinstance(wrapping_secrets, str) or not wrapping_secrets or not all(wrapping_secrets):
            raise ValueError("give a list of non-empty wrapping secrets")
        self._secrets = tuple(wrapping_secrets)

    @functools.cached_property
    def _keys(self) -> dict[str, AESGCM]:
        """The wrapping keys by fingerprint, the first secret's first."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        keys: dict[str, AESGCM] = {}
        for secret in self._secrets:
            derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=WRAP_INFO).derive(
                secret.encode("utf-8")
            )
            fingerprint = hashlib.sha256(WRAP_INFO + b"fingerprint" + derived).hexdigest()[:12]
            keys.setdefault(fingerprint, AESGCM(derived))
        return keys

    @property
    def _first(self) -> str:
        """The fingerprint of the key that wraps."""
        return next(iter(self._keys))

    def wrap(self, key: tokens.TokenKey) -> str:
        """The stored form of ``key``'s secret, bound to its kid."""
        nonce = os.urandom(12)
        sealed = self._keys[self._first].encrypt(nonce, key.secret.encode("ascii"), _aad(key.kid))
        encoded = base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode("ascii")
        return f"v1.{self._first}.{encoded}"

    def unwrap(self, kid: str, wrapped: str) -> tokens.TokenKey:
        """The key whose stored form is ``wrapped``; TokenKeyUnavailable if it cannot be opened."""
        unavailable = TokenKeyUnavailable(
            f"Tollgate cannot open token key {kid}: TOKEN_KEY_WRAPPING_SECRETS lacks the secret "
            "that wrapped it.",
            field=None,
        )
        version, fingerprint, encoded = [*wrapped.split("."), "", ""][:3]
        aead = self._keys.get(fingerprint)
        if version != "v1" or aead is None:
            raise unavailable
        from cryptography.exceptions import InvalidTag

        try:
            raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
            secret = aead.decrypt(raw[:12], raw[12:], _aad(kid)).decode("ascii")
        except (InvalidTag, ValueError) as exc:
            raise unavailable from exc
        return tokens.TokenKey(kid=kid, secret=secret)

    def is_current(self, wrapped: str) -> bool:
        """Whether ``wrapped`` was wrapped with the first wrapping secret."""
        return wrapped.startswith(f"v1.{self._first}.")


def _aad(kid: str) -> bytes:
    return b"tollgate.token-key:" + kid.encode("ascii")


def _unused_key(session: Session) -> tokens.TokenKey:
    """A fresh key whose kid no key has (48 random bits: a clash is rare, but checked)."""
    for _ in range(5):
        key = tokens.TokenKey.generate()
        if session.scalar(select(TokenKey.id).where(TokenKey.kid == key.kid)) is None:
            return key
    raise RuntimeError("could not find an unused token key id")  # pragma: no cover


def create_key(
    session: Session,
    client: ApiClient,
    *,
    wrapper: KeyWrapper,
    now: datetime,
    signs_from: datetime | None = None,
) -> tokens.TokenKey:
    """Add a key to ``client``'s set and return it: the only time its secret is known in full."""
    key = _unused_key(session)
    session.add(
        TokenKey(
            kid=key.kid,
            api_client_id=client.id,
            wrapped_secret=wrapper.wrap(key),
            created_at=now,
            signs_from=signs_from or now,
        )
    )
    session.flush()
    return key


def keys_of(session: Session, client_id: int) -> list[TokenKey]:
    """Every key of the client, newest signing time first."""
    return list(
        session.scalars(
            select(TokenKey)
            .where(TokenKey.api_client_id == client_id)
            .order_by(TokenKey.signs_from.desc(), TokenKey.id.desc())
        )
    )


def signing_key(keys: Sequence[TokenKey], now: datetime) -> TokenKey | None:
    """The key that signs at ``now``: the newest listed key whose signing time has come."""
    ready = [key for key in keys if key.is_listed(now) and key.signs_from <= now]
    return max(ready, key=lambda key: (key.signs_from, key.id), default=None)


def state(key: TokenKey, keys: Sequence[TokenKey], now: datetime) -> TokenKeyState:
    """Where ``key`` is at ``now`` among its client's ``keys``."""
    if key.revoked_at is not None:
        return TokenKeyState.REVOKED
    if not key.is_listed(now):
        return TokenKeyState.RETIRED
    if key.signs_from > now:
        return TokenKeyState.PENDING
    signer = signing_key(keys, now)
    return TokenKeyState.SIGNING if signer is key else TokenKeyState.VERIFYING


def check_duration(value: timedelta, *, field: str, maximum: timedelta) -> timedelta:
    """``value`` if it is between zero and ``maximum``; ValidationFailed naming ``field``."""
    if value < timedelta(0) or value > maximum:
        raise ValidationFailed(f"Choose a time from 0 to {maximum.days} days.", field=field)
    return value


def rotate(
    session: Session,
    client: ApiClient,
    *,
    wrapper: KeyWrapper,
    now: datetime,
    signs_in: timedelta = timedelta(0),
    retire_after: timedelta = DEFAULT_RETIRE_AFTER,
) -> tokens.TokenKey:
    """Add a key that signs from ``now + signs_in``; earlier keys retire ``retire_after`` that.

    Returns the new key, shown once. A key already retiring sooner keeps its earlier retirement.
    """
    if client.revoked_at is not None:
        raise Conflict("This API client is revoked; create a new one instead.", field="client_id")
    starts = now + check_duration(signs_in, field="signs_in", maximum=MAX_SIGNS_IN)
    retires = starts + check_duration(retire_after, field="retire_after", maximum=MAX_RETIRE_AFTER)
    for key in keys_of(session, client.id):
        if key.is_listed(now) and (key.retires_at is None or key.retires_at > retires):
            key.retires_at = retires
    return create_key(session, client, wrapper=wrapper, now=now, signs_from=starts)


def by_kid(session: Session, kid: str) -> TokenKey:
    """The key with this kid; NotFound otherwise."""
    key = session.scalar(select(TokenKey).where(TokenKey.kid == kid))
    if key is None:
        raise NotFound("No token key has this id.", field="kid", code="token_key_not_found")
    return key


def revoke(key: TokenKey, *, now: datetime) -> None:
    """End ``key`` at once: it signs and verifies nothing from ``now`` on."""
    if not key.is_listed(now):
        raise Conflict(f"Token key {key.kid} is already revoked or retired.", field="kid")
    key.revoked_at = now


def revoke_all(client: ApiClient, *, now: datetime) -> int:
    """Revoke every key of ``client`` that still verifies (the client itself is revoked)."""
    session = object_session(client)
    if session is None:
        return 0
    listed = [key for key in keys_of(session, client.id) if key.is_listed(now)]
    for key in listed:
        key.revoked_at = now
    return len(listed)


def signer_for(
    session: Session, client: ClientRef, *, wrapper: KeyWrapper, now: datetime, ttl: timedelta
) -> tokens.TokenSigner:
    """The signer of ``client``'s tokens at ``now``; NoTokenKey when no key signs."""
    key = signing_key(keys_of(session, client.id), now)
    if key is None:
        raise NoTokenKey(
            "This API client has no token key that signs now; an admin rotates its token keys "
            "on /staff/api-clients.",
            field="client_id",
        )
    return tokens.TokenSigner(
        [wrapper.unwrap(key.kid, key.wrapped_secret)], client_id=client.public_id, ttl=ttl
    )


def verifier_for(
    session: Session, kid: str, client: ClientRef, *, wrapper: KeyWrapper, now: datetime
) -> tokens.TokenSigner:
    """A verifier holding the key ``kid`` if it is ``client``'s and still verifies.

    Raises TokenInvalid for an unknown, retired or revoked key, or another client's.
    """
    key = session.scalar(select(TokenKey).where(TokenKey.kid == kid))
    if key is None or not key.is_listed(now):
        raise tokens.TokenInvalid(f"{kid} is not a token key that verifies")
    if key.api_client_id != client.id:
        raise tokens.TokenForAnotherClient("token issued to another API client")
    return tokens.TokenSigner(
        [wrapper.unwrap(key.kid, key.wrapped_secret)], client_id=client.public_id
    )


def rewrap_all(session: Session, wrapper: KeyWrapper) -> int:
    """Re-wrap every stored key not wrapped with the first wrapping secret; how many were."""
    count = 0
    for key in session.scalars(select(TokenKey)):
        if not wrapper.is_current(key.wrapped_secret):
            key.wrapped_secret = wrapper.wrap(wrapper.unwrap(key.kid, key.wrapped_secret))
            count += 1
    return count


def current_wrapper() -> KeyWrapper:
    """The running app's key wrapper."""
    from flask import current_app

    return current_app.extensions["token_key_wrapper"]  # type: ignore[no-any-return]
