"""The content site's API under ``/api/v1/``: entitlement decisions, access tokens, reader look-ups.

Every call but the OpenAPI document needs ``Authorization: Bearer <key>`` with the right scope
(401 ``invalid_api_key`` / 403 ``insufficient_scope``). The entitlement endpoints are the hot path:
they answer from the client cache and the decision cache, and read the clock once.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import wraps
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from flask.blueprints import BlueprintSetupState
from sqlalchemy.orm import Session

from billing import db, inputs, ip_session_counter
from billing.clock import current_clock
from billing.errors import NotFound, ValidationFailed, error_body
from billing.extensions import limiter
from billing.metrics import ENTITLEMENT_DECISIONS
from billing.models import Reader
from billing.services import (
    accounts,
    api_clients,
    decision_cache,
    entitlements,
    group_networks,
    legacy_tokens,
    token_keys,
)
from billing.services.api_clients import (
    SCOPE_ENTITLEMENTS_READ,
    SCOPE_READERS_READ,
    SCOPE_TOKENS_ISSUE,
    AuthenticatedClient,
    InvalidApiKey,
)
from billing.services.decision_cache import CachedReader
from billing.services.entitlements import Decision
from billing.services.tokens import (
    KID_LENGTH,
    AccessClaims,
    TokenExpired,
    TokenForAnotherClient,
    TokenInvalid,
)
from billing.views import openapi

bp = Blueprint("api", __name__)
"""Mounted at ``/api/v1`` as its own app by :func:`billing.views.mount_api`."""

_READER_ID = re.compile(r"rdr_[A-Za-z0-9_-]{1,28}")
_IP_CHARACTERS = re.compile(r"[0-9A-Fa-f:.]+")
"""What a plain IPv4 or IPv6 address is written with (no spaces, brackets, ports or zones)."""
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_CHECK_MEMBERS = ("token", "reader_id", "ip")

View = Callable[..., Any]


@bp.record_once
def _setup(state: BlueprintSetupState) -> None:
    config = state.app.config
    state.app.extensions["api_client_cache"] = api_clients.ClientCache(
        ttl=float(config["API_CLIENT_CACHE_TTL"])
    )


@bp.after_request
def _no_store(response: Response) -> Response:
    response.headers.setdefault("Cache-Control", "no-store")
    return response


@bp.errorhandler(InvalidApiKey)
def _unauthenticated(exc: InvalidApiKey) -> tuple[Response, int, dict[str, str]]:
    return (
        jsonify(error_body(exc.code, exc.message, exc.field)),
        exc.status,
        {"WWW-Authenticate": 'Bearer realm="tollgate"'},
    )


@bp.errorhandler(entitlements.AccessRefused)
def _refused(exc: entitlements.AccessRefused) -> tuple[Response, int]:
    """409 in the one error shape, with the decision's reason beside the code."""
    body = error_body(exc.code, exc.message, exc.field)
    body["error"]["reason"] = exc.decision.reason.value
    return jsonify(body), exc.status


class ReaderNotFound(NotFound):
    """No reader has the id (or address) asked about."""

    code = "reader_not_found"


def _bearer_key() -> str | None:
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return key.strip() or None


def requires(scope: str, *, query: tuple[str, ...] = ()) -> Callable[[View], View]:
    """Authenticate the API key, record its use, check ``scope``; the view gets client and now.

    A query parameter other than those in ``query`` is refused (400 naming it), so a misspelt
    one never passes for absent; so is one given twice (``?ip=a&ip=b``), which a proxy or cache
    in front could read differently from us.
    """

    def decorator(view: View) -> View:
        @wraps(view)
        def wrapped(**kwargs: Any) -> Any:
            now = current_clock().now()
            session = db.session()
            cache = api_clients.current_cache()
            client = api_clients.authenticate(session, _bearer_key(), cache=cache)
            if api_clients.record_use(session, client, now=now, cache=cache):
                session.commit()
            api_clients.require_scope(client, scope)
            if request.args:
                _only_query(query)
            return view(client, now, **kwargs)

        return wrapped

    return decorator


def _only_query(allowed: tuple[str, ...]) -> None:
    for name, values in request.args.lists():
        if name not in allowed:
            expected = ", ".join(allowed) if allowed else "no query parameters"
            raise ValidationFailed(
                f"Unknown query parameter {name!r}; this operation takes {expected}.",
                field=name or None,
            )
        if len(values) > 1:
            raise ValidationFailed(f"Give the query parameter {name!r} once.", field=name)


def _rate_limit() -> str:
    return str(current_app.config["RATELIMIT_API"])


def _rate_key() -> str:
    """Rate-limit bucket: the presented key (hashed), so one client cannot starve another."""
    return "api:" + hashlib.sha256((_bearer_key() or "").encode()).hexdigest()


api_budget = limiter.shared_limit(_rate_limit, scope="api-key", key_func=_rate_key)
"""One budget per API key, shared by token issues and reader look-ups (``RATELIMIT_API``)."""


def _time(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).strftime(_TIME_FORMAT)


def _decision_body(decision: Decision, reader_id: str | None, now: datetime) -> dict[str, Any]:
    """The API's answer for ``decision``; every answer is counted in the metrics by reason."""
    ENTITLEMENT_DECISIONS.labels(reason=decision.reason.value).inc()
    return {
        "granted": decision.granted,
        "reason": decision.reason.value,
        "until": _time(decision.until),
        "reader_id": reader_id,
        "plan": decision.plan,
        "group_id": decision.group,
        "checked_at": _time(now),
    }


def _cached_reader(session: Session, reader_id: str, now: datetime) -> CachedReader:
    """The reader's cached decision; ReaderNotFound for an id no reader has."""
    if _READER_ID.fullmatch(reader_id):
        entry = decision_cache.current().lookup(session, reader_id, now)
        if entry.reader_id is not None:
            return entry
    raise ReaderNotFound("No reader has this id.", field="reader_id")


def _ip(value: Any, *, required: bool) -> str | None:
    """The address in ``value``, normalised; ValidationFailed naming ``ip`` otherwise.

    Strict: a plain IPv4 or IPv6 address of at most :data:`~billing.inputs.IP_MAX_LENGTH`
    characters, without spaces, brackets, a port, a prefix length or an IPv6 zone id
    (``fe80::1%eth0``).
    """
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise ValidationFailed("Give the visitor's IP address.", field="ip")
    if len(value) > inputs.IP_MAX_LENGTH or not _IP_CHARACTERS.fullmatch(value):
        raise ValidationFailed("This is not an IPv4 or IPv6 address.", field="ip")
    try:
        return group_networks.normalised_address(value)
    except ValueError as exc:
        raise ValidationFailed("This is not an IPv4 or IPv6 address.", field="ip") from exc


def _address_decision(ip: str | None, now: datetime) -> Decision:
    """The decision for an anonymous visitor from ``ip``: by the group office networks; a grant
    counts as the group's IP session of the day (in memory, written after the response)."""
    if ip is None:
        return Decision.refused()
    decision = decision_cache.current().lookup_ip(db.session(), ip, now)
    if decision.granted and decision.group is not None:
        ip_session_counter.count(decision.group, ip, now)
    return decision


def _json_object(members: tuple[str, ...]) -> dict[str, str]:
    """The request body as a JSON object of non-empty strings, with only ``members``."""
    body = inputs.json_body()
    if not isinstance(body, dict):
        raise ValidationFailed("The body must be a JSON object.", field=None)
    for name, value in body.items():
        if name not in members:
            allowed = ", ".join(members)
            raise ValidationFailed(f"Unknown member {name!r}; expected {allowed}.", field=name)
        if not isinstance(value, str) or not value:
            raise ValidationFailed(f"{name} must be a non-empty string.", field=name)
    return body


@bp.get("/readers/<reader_id>/entitlement")
@requires(SCOPE_ENTITLEMENTS_READ)
def reader_entitlement(_client: AuthenticatedClient, now: datetime, reader_id: str) -> Response:
    """May this reader read? The hot path: answered from the decision cache."""
    entry = _cached_reader(db.session(), reader_id, now)
    return jsonify(_decision_body(entry.decision, entry.public_id, now))


@bp.get("/entitlement")
@requires(SCOPE_ENTITLEMENTS_READ, query=("ip",))
def anonymous_entitlement(_client: AuthenticatedClient, now: datetime) -> Response:
    """May an anonymous visitor from ``?ip=`` read?"""
    ip = _ip(request.args.get("ip"), required=True)
    return jsonify(_decision_body(_address_decision(ip, now), None, now))


@bp.post("/entitlement/check")
@requires(SCOPE_ENTITLEMENTS_READ)
def check(client: AuthenticatedClient, now: datetime) -> Response:
    """The decision a token carries, or a reader's, or an anonymous address's."""
    body = _json_object(_CHECK_MEMBERS)
    token, reader_id = body.get("token"), body.get("reader_id")
    if token is not None:
        if len(body) > 1:
            extra = next(name for name in _CHECK_MEMBERS[1:] if name in body)
            raise ValidationFailed("Send a token alone, without reader_id or ip.", field=extra)
        return jsonify(_token_decision(client, token, now))
    if reader_id is None and "ip" not in body:
        raise ValidationFailed("Send a token, a reader_id (and optionally ip), or an ip.")
    ip = _ip(body.get("ip"), required=reader_id is None)
    if reader_id is None:
        return jsonify(_decision_body(_address_decision(ip, now), None, now))
    entry = _cached_reader(db.session(), reader_id, now)
    decision = entry.decision
    if not decision.granted and ip is not None:
        by_address = _address_decision(ip, now)
        if by_address.granted:
            decision = by_address
    return jsonify(_decision_body(decision, entry.public_id, now))


def _token_decision(client: AuthenticatedClient, token: str, now: datetime) -> dict[str, Any]:
    """The decision ``token`` carries, if it is a genuine, unexpired token issued to ``client``.

    Tokens signed with the client's token keys carry a grant. Old-form tokens (signed with
    ``SECRET_KEYS``) are still accepted until they expire, by the rule in
    :mod:`billing.services.legacy_tokens`, and may carry a refusal.
    """
    claims: AccessClaims | legacy_tokens.LegacyClaims
    try:
        if token.startswith("tk_"):
            verifier = token_keys.verifier_for(
                db.session(),
                token[:KID_LENGTH],
                client,
                wrapper=token_keys.current_wrapper(),
                now=now,
            )
            claims = verifier.verify(token, now=now)
        else:
            claims = legacy_tokens.verify(
                token,
                current_app.config["SECRET_KEYS"],
                client_id=client.public_id,
                now=now,
                max_lifetime=timedelta(seconds=int(current_app.config["ACCESS_TOKEN_TTL"])),
            )
    except TokenExpired as exc:
        raise ValidationFailed(
            "The token has expired; ask for a new one.", field="token", code="token_expired"
        ) from exc
    except TokenForAnotherClient as exc:
        raise ValidationFailed(
            "The token was issued to another API client.", field="token", code="token_invalid"
        ) from exc
    except TokenInvalid as exc:
        raise ValidationFailed(
            "The token is not valid (malformed, tampered with or signed with another key).",
            field="token",
            code="token_invalid",
        ) from exc
    try:
        reason = entitlements.Reason(claims.reason)
    except ValueError as exc:
        raise ValidationFailed(
            "The token carries an unknown reason.", field="token", code="token_invalid"
        ) from exc
    decision = Decision(
        granted=getattr(claims, "granted", True),
        reason=reason,
        until=claims.until,
        plan=claims.plan,
        group=claims.group_id,
    )
    return _decision_body(decision, claims.reader_id, now)


@bp.post("/tokens")
@api_budget
@requires(SCOPE_TOKENS_ISSUE)
def issue_token(client: AuthenticatedClient, now: datetime) -> tuple[Response, int]:
    """Sign the reader's current decision into an access token; 409 when it refuses access."""
    body = _json_object(("reader_id",))
    if "reader_id" not in body:
        raise ValidationFailed("Give the reader_id.", field="reader_id")
    session, reader_id = db.session(), body["reader_id"]
    entry = _cached_reader(session, reader_id, now)
    signer = token_keys.signer_for(
        session,
        client,
        wrapper=token_keys.current_wrapper(),
        now=now,
        ttl=timedelta(seconds=int(current_app.config["ACCESS_TOKEN_TTL"])),
    )
    token, expires_at, _decision = entitlements.issue_token(
        signer,
        lambda at: _cached_reader(session, reader_id, at).decision,
        reader_id=entry.public_id,
        now=now,
    )
    return jsonify(token=token, expires_at=_time(expires_at)), 201


def _reader_body(session: Session, reader: Reader, now: datetime) -> dict[str, Any]:
    entry = _cached_reader(session, reader.public_id, now)
    trial = reader.trial
    return {
        "reader_id": reader.public_id,
        "email": reader.email,
        "name": reader.name,
        "country": reader.country,
        "verified": reader.is_verified,
        "created_at": _time(reader.created_at),
        "trial": None
        if trial is None
        else {
            "status": trial.status_at(now).value,
            "started_at": _time(trial.started_at),
            "ends_at": _time(trial.ends_at),
        },
        "entitlement": _decision_body(entry.decision, reader.public_id, now),
    }


@bp.get("/readers/<reader_id>")
@api_budget
@requires(SCOPE_READERS_READ)
def reader(_client: AuthenticatedClient, now: datetime, reader_id: str) -> Response:
    """A reader for support: account, trial and decision."""
    session = db.session()
    found = accounts.by_public_id(session, reader_id)
    if found is None:
        raise ReaderNotFound("No reader has this id.", field="reader_id")
    return jsonify(_reader_body(session, found, now))


@bp.get("/readers")
@api_budget
@requires(SCOPE_READERS_READ, query=("email",))
def reader_by_email(_client: AuthenticatedClient, now: datetime) -> Response:
    """A reader for support, found by login e-mail address (normalised first)."""
    raw = request.args.get("email")
    if raw is None:
        raise ValidationFailed("Give the e-mail address to look for.", field="email")
    local, at, domain = raw.strip().rpartition("@")
    if not (local and at and domain) or len(raw) > inputs.EMAIL_MAX_LENGTH:
        raise ValidationFailed("This is not an e-mail address.", field="email")
    not_found = ReaderNotFound("No reader has this e-mail address.", field="email")
    try:
        address = accounts.normalise_email(raw, field="email")
    except ValidationFailed as exc:
        # An address, but not one sign-up accepts (a quoted local part, a .test domain): no
        # reader can have it.
        raise not_found from exc
    session = db.session()
    found = accounts.find_by_email(session, address)
    if found is None:
        raise not_found
    return jsonify(_reader_body(session, found, now))


@bp.get("/openapi.json")
def openapi_document() -> Response:
    """The OpenAPI 3.1 document of this API (no key needed)."""
    return current_app.response_class(openapi.DOCUMENT_JSON, mimetype="application/json")
