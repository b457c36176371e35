"""API clients: the content site (and other apps) calling ``/api/v1/`` with a key and scopes.

Keys
====

A key looks like ``tg_AbCd3fGh.<43 characters>``: ``tg_`` and an 8-character random prefix, a dot,
and a 256-bit random secret (``secrets.token_urlsafe(32)``). It is shown once, when it is created or
rotated; the database keeps only the prefix (to find the row, and to show in lists) and the SHA-256
of the whole key. A fast hash is right here: the key is 256 bits of randomness, so there is nothing
to guess, and a slow password hash would cost every API call. Hashes are compared in constant time.

Authentication cost and revocation bound
========================================

The entitlement endpoint is called on every article view, so :class:`ClientCache` keeps each
authenticated client in the process for ``ttl`` seconds (default 5), keyed by the key's hash and
timed by a monotonic clock. **A revoked or rotated key therefore stops working in this process at
once, and in every other process within ``ttl`` seconds.** ``last_used_at`` is written at most once a
minute per client (:data:`LAST_USED_RESOLUTION`), not on every call.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from billing.errors import Conflict, DomainError, Forbidden, NotFound, ValidationFailed
from billing.models import ApiClient, Reader
from billing.services import token_keys, tokens

SCOPE_ENTITLEMENTS_READ = "entitlements:read"
SCOPE_TOKENS_ISSUE = "tokens:issue"
SCOPE_READERS_READ = "readers:read"
SCOPES: tuple[str, ...] = (SCOPE_ENTITLEMENTS_READ, SCOPE_TOKENS_ISSUE, SCOPE_READERS_READ)
"""Every scope a client can hold, in the order they are shown."""

SCOPE_DESCRIPTIONS: dict[str, str] = {
    SCOPE_ENTITLEMENTS_READ: "ask whether a reader, a token or an address may read",
    SCOPE_TOKENS_ISSUE: "issue signed access tokens for readers",
    SCOPE_READERS_READ: "look readers up for support (e-mail, name, trial)",
}

NAME_MAX_LENGTH = 200
MAX_ORIGINS = 20
ORIGIN_MAX_LENGTH = 255
KEY_PREFIX_LENGTH = 8
LAST_USED_RESOLUTION = timedelta(minutes=1)
"""``last_used_at`` is updated at most this often per client."""
DEFAULT_CACHE_TTL = 5.0
"""Seconds an authenticated client is trusted from memory: the revocation bound across processes."""

KEY_PATTERN = re.compile(r"(tg_[A-Za-z0-9_-]{8})\.[A-Za-z0-9_-]{43}")
_HOST_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class InvalidApiKey(DomainError):
    """No API key, or one that is unknown, rotated away or revoked."""

    status = 401
    code = "invalid_api_key"


class InsufficientScope(Forbidden):
    """The key is genuine but lacks the scope this call needs."""

    code = "insufficient_scope"


@dataclass(frozen=True)
class AuthenticatedClient:
    """What a request needs to know about the client that made it (no ORM object, safe to share)."""

    id: int
    public_id: str
    name: str
    scopes: frozenset[str]
    allowed_origins: tuple[str, ...]


def hash_key(raw_key: str) -> str:
    """The SHA-256 of a key, as 64 hex digits: what the database keeps."""
    return hashlib.sha256(raw_key.encode("utf-8")).hexdigest()


def _new_key() -> tuple[str, str]:
    """A fresh ``(key, prefix)``."""
    prefix = "tg_" + secrets.token_urlsafe(6)
    return f"{prefix}.{secrets.token_urlsafe(32)}", prefix


def _unused_key(session: Session) -> tuple[str, str]:
    """A fresh key whose prefix no client has (48 random bits: a clash is rare, but checked)."""
    for _ in range(5):
        key, prefix = _new_key()
        if session.scalar(select(ApiClient.id).where(ApiClient.key_prefix == prefix)) is None:
            return key, prefix
    raise RuntimeError("could not find an unused API key prefix")  # pragma: no cover


def check_name(name: str) -> str:
    """The trimmed client name; 1 to 200 characters."""
    value = (name or "").strip()
    if not value:
        raise ValidationFailed("Give the client a name.", field="name")
    if len(value) > NAME_MAX_LENGTH:
        raise ValidationFailed(f"Use at most {NAME_MAX_LENGTH} characters.", field="name")
    return value


def check_scopes(scopes: Iterable[str]) -> list[str]:
    """The scopes in their canonical order; at least one, each one of :data:`SCOPES`."""
    wanted = {scope.strip() for scope in scopes if scope and scope.strip()}
    unknown = sorted(wanted - set(SCOPES))
    if unknown:
        raise ValidationFailed(
            f"Unknown scope {', '.join(unknown)}; choose from {', '.join(SCOPES)}.",
            field="scopes",
        )
    if not wanted:
        raise ValidationFailed("Choose at least one scope.", field="scopes")
    return [scope for scope in SCOPES if scope in wanted]


def normalise_origin(raw: str) -> str:
    """``scheme://host[:port]``, lower-cased, default port dropped; anything else is refused.

    Only http and https; no user name, path, query or fragment (a lone trailing ``/`` is dropped).
    """
    value = (raw or "").strip()
    problem = _origin_problem(value)
    if problem:
        raise ValidationFailed(
            f"{value or 'An empty line'} is not an origin: {problem}.", field="allowed_origins"
        )
    parts = urlsplit(value)
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def _origin_problem(value: str) -> str | None:
    """Why ``value`` is not an acceptable origin, or ``None``."""
    if not value:
        return "write it as https://host or https://host:port"
    if len(value) > ORIGIN_MAX_LENGTH:
        return f"use at most {ORIGIN_MAX_LENGTH} characters"
    if any(ch.isspace() for ch in value) or any(ch in value for ch in "?#\\"):
        return "write only scheme://host[:port], without spaces, query or fragment"
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return "the host or port is not valid"
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not value.lower().startswith(f"{scheme}://"):
        return "it must start with https:// or http://"
    if "@" in parts.netloc:
        return "it must not contain a user name or password"
    if parts.path not in ("", "/"):
        return "it must not have a path"
    if port == 0 or parts.netloc.endswith(":"):
        return "the port is not a number from 1 to 65535"
    host = parts.hostname or ""
    if not host:
        return "it has no host name"
    if parts.netloc.startswith("["):
        return None if _is_ipv6(host) else "the IPv6 address is not valid"
    if not all(_HOST_LABEL.fullmatch(label) for label in host.split(".")):
        return "the host name is not valid (use ASCII; write international names in punycode)"
    return None


def _is_ipv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def check_origins(origins: Iterable[str]) -> list[str]:
    """The normalised origins, without duplicates, in the order given (empty lines skipped)."""
    result: list[str] = []
    for raw in origins:
        if not raw or not raw.strip():
            continue
        origin = normalise_origin(raw)
        if origin not in result:
            result.append(origin)
    if len(result) > MAX_ORIGINS:
        raise ValidationFailed(f"List at most {MAX_ORIGINS} origins.", field="allowed_origins")
    return result


def create(
    session: Session,
    *,
    name: str,
    scopes: Iterable[str],
    allowed_origins: Iterable[str] = (),
    created_by: Reader | None,
    now: datetime,
    wrapper: token_keys.KeyWrapper | None = None,
) -> tuple[ApiClient, str, tokens.TokenKey]:
    """Create a client with its first token key; return it, its API key and its token key.

    This is the only time either key is known in full. ``wrapper`` defaults to the running app's.
    """
    client_name = check_name(name)
    client_scopes = check_scopes(scopes)
    origins = check_origins(allowed_origins)
    key, prefix = _unused_key(session)
    client = ApiClient(
        name=client_name,
        key_prefix=prefix,
        key_hash=hash_key(key),
        scopes=client_scopes,
        allowed_origins=origins,
        created_at=now,
        created_by_id=created_by.id if created_by is not None else None,
    )
    session.add(client)
    session.flush()
    token_key = token_keys.create_key(
        session, client, wrapper=wrapper or token_keys.current_wrapper(), now=now
    )
    return client, key, token_key


def all_clients(session: Session) -> Sequence[ApiClient]:
    """Every client, active ones first, newest first."""
    return session.scalars(
        select(ApiClient).order_by(
            ApiClient.revoked_at.is_not(None), ApiClient.created_at.desc(), ApiClient.id.desc()
        )
    ).all()


def by_public_id(session: Session, public_id: str) -> ApiClient:
    """The client with this public id; NotFound otherwise."""
    client = session.scalar(select(ApiClient).where(ApiClient.public_id == public_id))
    if client is None:
        raise NotFound("No API client has this id.", field="client_id", code="client_not_found")
    return client


def rotate(session: Session, client: ApiClient) -> str:
    """Give ``client`` a new key and return it; the old key stops working (see the module docs)."""
    if client.revoked_at is not None:
        raise Conflict("This API client is revoked; create a new one instead.", field="client_id")
    key, prefix = _unused_key(session)
    client.key_prefix = prefix
    client.key_hash = hash_key(key)
    session.flush()
    return key


def revoke(client: ApiClient, *, now: datetime) -> None:
    """Revoke ``client``: its API key and token keys stop working for good.

    The API key within the cache bound (see the module docs), the token keys at once.
    """
    if client.revoked_at is not None:
        raise Conflict("This API client is already revoked.", field="client_id")
    client.revoked_at = now
    token_keys.revoke_all(client, now=now)


class ClientCache:
    """Authenticated clients by key hash, trusted for ``ttl`` seconds of a monotonic clock.

    A key revoked or rotated elsewhere keeps working here for at most ``ttl`` seconds; call
    :meth:`clear` after changing clients in this process to make the change immediate here.
    """

    def __init__(
        self, *, ttl: float = DEFAULT_CACHE_TTL, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.monotonic = monotonic
        self._entries: dict[str, tuple[AuthenticatedClient, float]] = {}
        self._last_used: dict[int, datetime] = {}
        self._lock = threading.Lock()

    def get(self, key_hash: str) -> AuthenticatedClient | None:
        """The client cached for ``key_hash`` if it is still fresh."""
        entry = self._entries.get(key_hash)
        if entry is None or self.monotonic() >= entry[1]:
            return None
        return entry[0]

    def put(
        self, key_hash: str, client: AuthenticatedClient, last_used_at: datetime | None
    ) -> None:
        """Remember ``client`` for ``ttl`` seconds, and when it was last used as far as we know."""
        with self._lock:
            self._entries[key_hash] = (client, self.monotonic() + self.ttl)
            if last_used_at is not None and client.id not in self._last_used:
                self._last_used[client.id] = last_used_at

    def last_used(self, client_id: int) -> datetime | None:
        """When this process last recorded a use of the client."""
        return self._last_used.get(client_id)

    def mark_used(self, client_id: int, now: datetime) -> None:
        """Note that a use at ``now`` was recorded."""
        self._last_used[client_id] = now

    def clear(self) -> None:
        """Forget every cached client."""
        with self._lock:
            self._entries.clear()
            self._last_used.clear()

    def __len__(self) -> int:
        return len(self._entries)


def authenticate(
    session: Session, raw_key: str | None, *, cache: ClientCache
) -> AuthenticatedClient:
    """The client holding ``raw_key``; InvalidApiKey (401) for a missing, unknown or revoked key."""
    if not raw_key:
        raise InvalidApiKey(
            "Send your API key as 'Authorization: Bearer <key>'.", field="Authorization"
        )
    match = KEY_PATTERN.fullmatch(raw_key)
    if match is None:
        raise InvalidApiKey("The API key is not valid.", field="Authorization")
    key_hash = hash_key(raw_key)
    cached = cache.get(key_hash)
    if cached is not None:
        return cached
    row = session.execute(
        select(
            ApiClient.id,
            ApiClient.public_id,
            ApiClient.name,
            ApiClient.key_hash,
            ApiClient.scopes,
            ApiClient.allowed_origins,
            ApiClient.revoked_at,
            ApiClient.last_used_at,
        ).where(ApiClient.key_prefix == match.group(1))
    ).one_or_none()
    if row is None or not hmac.compare_digest(row.key_hash, key_hash) or row.revoked_at is not None:
        raise InvalidApiKey(
            "The API key is not valid (unknown, rotated or revoked).", field="Authorization"
        )
    client = AuthenticatedClient(
        id=row.id,
        public_id=row.public_id,
        name=row.name,
        scopes=frozenset(row.scopes or ()),
        allowed_origins=tuple(row.allowed_origins or ()),
    )
    cache.put(key_hash, client, row.last_used_at)
    return client


def record_use(
    session: Session, client: AuthenticatedClient, *, now: datetime, cache: ClientCache
) -> bool:
    """Set the client's ``last_used_at`` if it is a minute or more old; True when it wrote.

    The caller commits when this returns True. Several processes may each write once a minute;
    the conditional update keeps the column from moving backwards.
    """
    last = cache.last_used(client.id)
    if last is not None and now - last < LAST_USED_RESOLUTION:
        return False
    session.execute(
        update(ApiClient)
        .where(ApiClient.id == client.id)
        .where(
            or_(
                ApiClient.last_used_at.is_(None),
                ApiClient.last_used_at <= now - LAST_USED_RESOLUTION,
            )
        )
        .values(last_used_at=now)
        .execution_options(synchronize_session=False)
    )
    cache.mark_used(client.id, now)
    return True


def require_scope(client: AuthenticatedClient | ApiClient, scope: str) -> None:
    """Refuse with InsufficientScope (403) unless ``client`` holds ``scope``."""
    if scope not in client.scopes:
        raise InsufficientScope(f"This API key lacks the scope {scope}.", field=None)


def current_cache() -> ClientCache:
    """The running app's client cache (created when the API blueprint is registered)."""
    from flask import current_app

    return current_app.extensions["api_client_cache"]  # type: ignore[no-any-return]
