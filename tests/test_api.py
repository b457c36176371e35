"""The content site's API: decisions for every reason, tokens, reader look-ups, keys and scopes."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from flask import Flask
from flask.testing import FlaskClient
from itsdangerous import URLSafeTimedSerializer
from sqlalchemy import event, select
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from billing import db
from billing.clock import FixedClock
from billing.models import ApiClient, Reader, SubscriptionStatus
from billing.services import api_clients, decision_cache, legacy_tokens, token_keys
from billing.services.api_clients import ClientCache
from billing.services.tokens import TokenKey, TokenSigner
from tests import factories
from tests.conftest import START, TEST_SECRET
from tests.helpers import FakeMonotonic

ALL_SCOPES = list(api_clients.SCOPES)
DECISION_KEYS = {"granted", "reason", "until", "reader_id", "plan", "group_id", "checked_at"}
T = "%Y-%m-%dT%H:%M:%SZ"


@pytest.fixture
def tick(app: Flask) -> FakeMonotonic:
    """The fake monotonic clock of the app's API client cache."""
    fake = FakeMonotonic()
    app.extensions["api_client_cache"] = ClientCache(monotonic=fake)
    return fake


KeyMaker = Callable[..., str]
TOKEN_KEYS: dict[str, tuple[str, TokenKey]] = {}
"""By API key: the client's id and the token key it was given when created (what the site holds)."""


@pytest.fixture
def make_key(session: Session, clock: FixedClock) -> KeyMaker:
    """Create an API client with ``scopes`` (all by default) and return its key."""

    def make(scopes: list[str] | None = None, name: str = "Content site") -> str:
        api_client, key, token_key = api_clients.create(
            session,
            name=name,
            scopes=scopes or ALL_SCOPES,
            allowed_origins=["https://news.example.eu"],
            created_by=None,
            now=clock.now(),
        )
        session.commit()
        TOKEN_KEYS[key] = (api_client.public_id, token_key)
        return key

    return make


@pytest.fixture
def key(make_key: KeyMaker, tick: FakeMonotonic) -> str:
    """A key with every scope."""
    return make_key()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def at(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(T)


def entitlement(client: FlaskClient, key: str, reader: Reader) -> dict[str, Any]:
    response = client.get(f"/api/v1/readers/{reader.public_id}/entitlement", headers=auth(key))
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()  # type: ignore[no-any-return]


def error_of(response: TestResponse) -> dict[str, Any]:
    body = response.get_json()
    assert set(body) == {"error"}
    # A refused token issue also names the decision's reason; nothing else adds a member.
    extra = {"reason"} if body["error"].get("code") == "access_refused" else set()
    assert set(body["error"]) == {"code", "message", "field", *extra}
    return body["error"]  # type: ignore[no-any-return]


def _committed(reader: Reader) -> Reader:
    db.session().commit()
    return reader


# Decisions ---------------------------------------------------------------------------------

GRACE = timedelta(days=7)
PERIOD_END = START + timedelta(days=30)


def _subscribed(**fields: Any) -> Reader:
    return factories.SubscriptionFactory(**fields).reader  # type: ignore[no-any-return]


SCENARIOS: list[tuple[str, Callable[[], Reader], bool, str, datetime | None, str | None]] = [
    ("subscription", lambda: _subscribed(), True, "subscription", PERIOD_END, "individual-monthly"),
    (
        "trial",
        lambda: factories.TrialFactory().reader,
        True,
        "trial",
        START + timedelta(days=14),
        None,
    ),
    (
        "grace period",
        lambda: _subscribed(cancel_at_period_end=True, canceled_at=START),
        True,
        "grace_period",
        PERIOD_END,
        "individual-monthly",
    ),
    (
        "past-due grace",
        lambda: _subscribed(
            status=SubscriptionStatus.PAST_DUE, past_due_since=START - timedelta(days=2)
        ),
        True,
        "past_due_grace",
        START - timedelta(days=2) + GRACE,
        "individual-monthly",
    ),
    (
        "complimentary",
        lambda: factories.GrantFactory().reader,
        True,
        "complimentary",
        START + timedelta(days=90),
        None,
    ),
    ("none", lambda: factories.reader(), False, "none", None, None),
    (
        "e-mail unverified",
        lambda: factories.reader(email_verified_at=None),
        False,
        "email_unverified",
        None,
        None,
    ),
    (
        "trial expired",
        lambda: factories.TrialFactory(started_at=START - timedelta(days=20)).reader,
        False,
        "trial_expired",
        None,
        None,
    ),
    (
        "subscription ended",
        lambda: _subscribed(
            status=SubscriptionStatus.CANCELED,
            current_period_start=START - timedelta(days=40),
            current_period_end=START - timedelta(days=10),
            ended_at=START - timedelta(days=10),
        ),
        False,
        "subscription_ended",
        None,
        None,
    ),
    (
        "payment failed",
        lambda: _subscribed(
            status=SubscriptionStatus.PAST_DUE, past_due_since=START - timedelta(days=8)
        ),
        False,
        "payment_failed",
        None,
        None,
    ),
]


@pytest.mark.parametrize(
    ("build", "granted", "reason", "until", "plan"),
    [scenario[1:] for scenario in SCENARIOS],
    ids=[scenario[0] for scenario in SCENARIOS],
)
def test_the_api_gives_the_decision_for_each_reason(
    client: FlaskClient,
    key: str,
    build: Callable[[], Reader],
    granted: bool,
    reason: str,
    until: datetime | None,
    plan: str | None,
) -> None:
    reader = _committed(build())

    body = entitlement(client, key, reader)

    assert body == {
        "granted": granted,
        "reason": reason,
        "until": None if until is None else at(until),
        "reader_id": reader.public_id,
        "plan": plan,
        "group_id": None,
        "checked_at": at(START),
    }


def test_an_unknown_or_malformed_reader_id_is_a_404_naming_the_field(
    client: FlaskClient, key: str
) -> None:
    for reader_id in ("rdr_doesnotexist0000", "not-a-reader-id", "rdr_" + "x" * 40):
        response = client.get(f"/api/v1/readers/{reader_id}/entitlement", headers=auth(key))
        assert response.status_code == 404
        assert error_of(response) == {
            "code": "reader_not_found",
            "message": "No reader has this id.",
            "field": "reader_id",
        }


def test_a_deleted_reader_is_no_longer_found(
    client: FlaskClient, key: str, session: Session
) -> None:
    reader = _committed(factories.reader())
    assert entitlement(client, key, reader)["reason"] == "none"

    session.delete(reader)
    session.commit()
    decision_cache.current().clear()
    response = client.get(f"/api/v1/readers/{reader.public_id}/entitlement", headers=auth(key))

    assert response.status_code == 404


@pytest.fixture
def slow_poll(app_config: dict[str, Any]) -> None:
    """Make the decision cache poll its change log only once an hour."""
    app_config["DECISION_CACHE_POLL_INTERVAL"] = 3600.0


def test_a_warm_entitlement_check_runs_no_sql(
    slow_poll: None, client: FlaskClient, key: str
) -> None:
    reader_id = _committed(factories.TrialFactory().reader).public_id
    path = f"/api/v1/readers/{reader_id}/entitlement"
    client.get(path, headers=auth(key))
    statements: list[str] = []
    event.listen(db.engine(), "before_cursor_execute", lambda *a: statements.append(a[2]))

    response = client.get(path, headers=auth(key))

    assert response.get_json()["reason"] == "trial"
    assert statements == []


def test_an_anonymous_visitor_is_refused_with_reason_none_for_now(
    client: FlaskClient, key: str
) -> None:
    for ip in ("192.0.2.10", "2001:db8::1"):
        response = client.get("/api/v1/entitlement", query_string={"ip": ip}, headers=auth(key))
        assert response.status_code == 200
        assert response.get_json() == {
            "granted": False,
            "reason": "none",
            "until": None,
            "reader_id": None,
            "plan": None,
            "group_id": None,
            "checked_at": at(START),
        }


@pytest.mark.parametrize("query", [{}, {"ip": ""}, {"ip": "999.1.1.1"}, {"ip": "example.org"}])
def test_a_missing_or_bad_address_is_a_400_naming_ip(
    client: FlaskClient, key: str, query: dict[str, str]
) -> None:
    response = client.get("/api/v1/entitlement", query_string=query, headers=auth(key))

    assert response.status_code == 400
    assert error_of(response)["field"] == "ip"


def test_every_answer_says_not_to_store_it(client: FlaskClient, key: str) -> None:
    response = client.get("/api/v1/entitlement?ip=192.0.2.1", headers=auth(key))

    assert response.headers["Cache-Control"] == "no-store"
    assert response.mimetype == "application/json"


# The check endpoint ------------------------------------------------------------------------


def check(client: FlaskClient, key: str, body: Any, **kwargs: Any) -> TestResponse:
    if isinstance(body, str | bytes):
        return client.post(
            "/api/v1/entitlement/check",
            data=body,
            content_type="application/json",
            headers=auth(key),
        )
    return client.post("/api/v1/entitlement/check", json=body, headers=auth(key), **kwargs)


def test_checking_a_reader_id_gives_the_readers_decision(client: FlaskClient, key: str) -> None:
    reader = _committed(factories.TrialFactory().reader)

    for body in ({"reader_id": reader.public_id}, {"reader_id": reader.public_id, "ip": "::1"}):
        response = check(client, key, body)
        assert response.status_code == 200
        assert response.get_json() == entitlement(client, key, reader)


def test_checking_an_address_alone_gives_the_anonymous_decision(
    client: FlaskClient, key: str
) -> None:
    response = check(client, key, {"ip": "198.51.100.7"})

    assert response.status_code == 200
    assert response.get_json()["reason"] == "none"
    assert response.get_json()["reader_id"] is None


def test_checking_an_unknown_reader_is_a_404(client: FlaskClient, key: str) -> None:
    response = check(client, key, {"reader_id": "rdr_nobody000000000"})

    assert response.status_code == 404
    assert error_of(response)["code"] == "reader_not_found"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ("{not json", None),
        ("[]", None),
        ("null", None),
        ({}, None),
        ({"token": "x", "reader_id": "rdr_abc"}, "reader_id"),
        ({"token": "x", "ip": "192.0.2.1"}, "ip"),
        ({"reader_id": "rdr_abc", "ip": "nope"}, "ip"),
        ({"reader_id": 12}, "reader_id"),
        ({"reader_id": ""}, "reader_id"),
        ({"token": None}, "token"),
        ({"ip": ["192.0.2.1"]}, "ip"),
        ({"readerId": "rdr_abc"}, "readerId"),
    ],
)
def test_a_bad_body_is_a_400_naming_the_field(
    client: FlaskClient, key: str, body: Any, field: str | None
) -> None:
    response = check(client, key, body)

    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "validation_failed"
    assert error["field"] == field


# Tokens ------------------------------------------------------------------------------------


def issue(client: FlaskClient, key: str, reader_id: str) -> TestResponse:
    return client.post("/api/v1/tokens", json={"reader_id": reader_id}, headers=auth(key))


def test_a_token_round_trips_through_the_api(client: FlaskClient, key: str) -> None:
    reader = _committed(_subscribed())

    issued = issue(client, key, reader.public_id)

    assert issued.status_code == 201
    body = issued.get_json()
    assert set(body) == {"token", "expires_at"}
    assert body["expires_at"] == at(START + timedelta(minutes=15))
    checked = check(client, key, {"token": body["token"]})
    assert checked.status_code == 200
    assert checked.get_json() == entitlement(client, key, reader)


def test_an_issued_token_verifies_locally_with_the_clients_token_key(
    client: FlaskClient, key: str, session: Session
) -> None:
    reader = _committed(_subscribed())
    api_client = session.scalars(select(ApiClient)).one()
    client_id, token_key = TOKEN_KEYS[key]

    token = issue(client, key, reader.public_id).get_json()["token"]

    claims = TokenSigner([token_key], client_id=client_id).verify(token, now=START)
    assert token.startswith(token_key.kid + ".")
    assert claims.reader_id == reader.public_id
    assert claims.reason == "subscription"
    assert claims.plan == "individual-monthly"
    assert claims.until == PERIOD_END
    assert claims.client_id == api_client.public_id == client_id


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (lambda: factories.reader(email_verified_at=None), "email_unverified"),
        (
            lambda: factories.TrialFactory(started_at=START - timedelta(days=20)).reader,
            "trial_expired",
        ),
        (lambda: factories.reader(), "none"),
    ],
    ids=["unverified", "trial expired", "never had access"],
)
def test_a_reader_without_access_gets_a_409_with_the_reason_and_no_token(
    client: FlaskClient, key: str, build: Callable[[], Reader], reason: str
) -> None:
    reader = _committed(build())

    response = issue(client, key, reader.public_id)

    assert response.status_code == 409
    body = response.get_json()
    assert body == {
        "error": {
            "code": "access_refused",
            "message": f"This reader may not read now ({reason}), so no token is issued.",
            "field": "reader_id",
            "reason": reason,
        }
    }


def test_a_token_never_outlives_the_decision(client: FlaskClient, key: str) -> None:
    ends = START + timedelta(minutes=5)
    reader = _committed(
        factories.TrialFactory(started_at=ends - timedelta(days=14), ends_at=ends).reader
    )

    body = issue(client, key, reader.public_id).get_json()

    assert body["expires_at"] == at(ends)


def test_a_grant_ending_within_the_second_is_refused_as_the_refusal_it_becomes(
    client: FlaskClient, key: str
) -> None:
    ends = START + timedelta(milliseconds=500)
    reader = _committed(
        factories.TrialFactory(started_at=ends - timedelta(days=14), ends_at=ends).reader
    )

    response = issue(client, key, reader.public_id)

    assert response.status_code == 409
    assert error_of(response)["reason"] == "trial_expired"


def test_a_client_without_a_signing_token_key_gets_a_409_no_token_key(
    client: FlaskClient, key: str, session: Session, clock: FixedClock
) -> None:
    reader = _committed(_subscribed())
    api_client = session.scalars(select(ApiClient)).one()
    for token_key in token_keys.keys_of(session, api_client.id):
        token_keys.revoke(token_key, now=clock.now())
    session.commit()

    response = issue(client, key, reader.public_id)

    assert response.status_code == 409
    assert error_of(response)["code"] == "no_token_key"


@pytest.fixture
def short_ttl_app(app_config: dict[str, Any]) -> dict[str, Any]:
    app_config["ACCESS_TOKEN_TTL"] = 60
    return app_config


def test_a_shorter_configured_lifetime_is_used(
    short_ttl_app: dict[str, Any], client: FlaskClient, key: str
) -> None:
    reader = _committed(_subscribed())

    body = issue(client, key, reader.public_id).get_json()

    assert body["expires_at"] == at(START + timedelta(seconds=60))


def test_an_expired_token_is_a_400_token_expired(
    client: FlaskClient, key: str, clock: FixedClock
) -> None:
    reader = _committed(_subscribed())
    token = issue(client, key, reader.public_id).get_json()["token"]

    clock.advance(minutes=15)
    response = check(client, key, {"token": token})

    assert response.status_code == 400
    assert error_of(response)["code"] == "token_expired"
    assert error_of(response)["field"] == "token"


def test_a_token_just_before_its_expiry_still_checks(
    client: FlaskClient, key: str, clock: FixedClock
) -> None:
    reader = _committed(_subscribed())
    token = issue(client, key, reader.public_id).get_json()["token"]

    clock.advance(minutes=14, seconds=59)

    assert check(client, key, {"token": token}).status_code == 200


def _tamper(token: str) -> str:
    payload, rest = token.split(".", 1)
    flipped = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1]
    return f"{flipped}.{rest}"


@pytest.mark.parametrize(
    "mangle",
    [_tamper, lambda t: t[:-1] + ("A" if t[-1] != "A" else "E"), lambda t: "garbage", lambda t: ""],
    ids=["payload changed", "signature changed", "garbage", "empty"],
)
def test_a_tampered_token_is_a_400_token_invalid(
    client: FlaskClient, key: str, mangle: Callable[[str], str]
) -> None:
    reader = _committed(_subscribed())
    token = issue(client, key, reader.public_id).get_json()["token"]

    response = check(client, key, {"token": mangle(token)})

    assert response.status_code == 400
    error = error_of(response)
    assert error["field"] == "token"
    assert error["code"] in {"token_invalid", "validation_failed"}
    if mangle(token):
        assert error["code"] == "token_invalid"


def test_a_token_signed_with_another_key_under_our_kid_is_invalid(
    client: FlaskClient, key: str
) -> None:
    reader = _committed(_subscribed())
    client_id, token_key = TOKEN_KEYS[key]
    impostor = TokenKey(kid=token_key.kid, secret=TokenKey.generate().secret)
    forged, _ = TokenSigner([impostor], client_id=client_id).issue(
        reader_id=reader.public_id,
        reason="subscription",
        plan=None,
        group_id=None,
        until=None,
        now=START,
    )

    response = check(client, key, {"token": forged})

    assert error_of(response)["code"] == "token_invalid"


def test_a_token_of_an_unknown_key_is_invalid(client: FlaskClient, key: str) -> None:
    client_id, _ = TOKEN_KEYS[key]
    forged, _ = TokenSigner([TokenKey.generate()], client_id=client_id).issue(
        reader_id=None, reason="group_ip", plan=None, group_id="grp_x", until=None, now=START
    )

    assert error_of(check(client, key, {"token": forged}))["code"] == "token_invalid"


def test_a_token_issued_to_another_client_is_invalid_here(
    client: FlaskClient, key: str, make_key: KeyMaker
) -> None:
    reader = _committed(_subscribed())
    token = issue(client, key, reader.public_id).get_json()["token"]
    other = make_key(name="Newsletter")

    response = check(client, other, {"token": token})

    assert response.status_code == 400
    assert error_of(response) == {
        "code": "token_invalid",
        "message": "The token was issued to another API client.",
        "field": "token",
    }


def test_a_token_of_a_revoked_key_is_refused_at_once(
    client: FlaskClient, key: str, session: Session, clock: FixedClock
) -> None:
    reader = _committed(_subscribed())
    token = issue(client, key, reader.public_id).get_json()["token"]
    token_keys.revoke(token_keys.by_kid(session, token[:11]), now=clock.now())
    session.commit()

    assert error_of(check(client, key, {"token": token}))["code"] == "token_invalid"


def test_a_token_of_a_rotated_key_checks_until_the_key_retires(
    client: FlaskClient, key: str, session: Session, clock: FixedClock
) -> None:
    reader = _committed(_subscribed())
    old = issue(client, key, reader.public_id).get_json()["token"]
    api_client = session.scalars(select(ApiClient)).one()
    new_key = token_keys.rotate(
        session,
        api_client,
        wrapper=token_keys.current_wrapper(),
        now=clock.now(),
        retire_after=timedelta(minutes=10),
    )
    session.commit()

    new = issue(client, key, reader.public_id).get_json()["token"]
    assert new.startswith(new_key.kid + ".")
    clock.advance(minutes=9, seconds=59)
    assert check(client, key, {"token": old}).status_code == 200
    clock.advance(seconds=1)
    assert error_of(check(client, key, {"token": old}))["code"] == "token_invalid"
    assert check(client, key, {"token": new}).status_code == 200


# Old-form tokens (signed with SECRET_KEYS), accepted until they expire ---------------------------


def legacy_token(
    client_id: str,
    *,
    secret: str = TEST_SECRET,
    signed_at: datetime = START,
    lives: int = 900,
    **claims: Any,
) -> str:
    """An old-form token as the release before token keys issued it."""
    payload = {
        "reader_id": "rdr_old",
        "granted": True,
        "reason": "subscription",
        "plan": "individual-monthly",
        "group": None,
        "until": "2027-01-01T00:00:00Z",
        "client_id": client_id,
        "exp": int(signed_at.timestamp()) + lives,
        **claims,
    }
    serializer = URLSafeTimedSerializer(
        secret, salt=legacy_tokens.SALT, signer_kwargs={"digest_method": hashlib.sha256}
    )
    body = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=")
    with time_machine.travel(signed_at, tick=False):
        return serializer.make_signer().sign(body).decode()


def test_an_old_form_token_checks_until_it_expires(
    client: FlaskClient, key: str, clock: FixedClock
) -> None:
    client_id, _ = TOKEN_KEYS[key]
    token = legacy_token(client_id, group="grp_old")

    body = check(client, key, {"token": token}).get_json()
    assert (body["granted"], body["reason"], body["group_id"]) == (True, "subscription", "grp_old")
    clock.advance(minutes=14, seconds=59)
    assert check(client, key, {"token": token}).status_code == 200
    clock.advance(seconds=1)
    assert error_of(check(client, key, {"token": token}))["code"] == "token_expired"


@pytest.mark.parametrize(
    ("claims", "code"),
    [
        ({"lives": 901}, "token_invalid"),
        ({"secret": "someone-elses-secret"}, "token_invalid"),
        ({"client_id": "cli_another"}, "token_invalid"),
    ],
    ids=["lived longer than a token could", "another secret", "another client"],
)
def test_an_old_form_token_outside_the_rule_is_refused(
    client: FlaskClient, key: str, claims: dict[str, Any], code: str
) -> None:
    client_id, _ = TOKEN_KEYS[key]
    token = legacy_token(**{"client_id": client_id, **claims})

    assert error_of(check(client, key, {"token": token}))["code"] == code


def test_no_old_form_token_is_accepted_from_the_cut_over_on(
    client: FlaskClient, key: str, clock: FixedClock
) -> None:
    client_id, _ = TOKEN_KEYS[key]
    cut_over = legacy_tokens.ACCEPTED_UNTIL
    clock.set(cut_over - timedelta(minutes=1))
    token = legacy_token(client_id, signed_at=cut_over - timedelta(minutes=5))
    assert check(client, key, {"token": token}).status_code == 200

    clock.set(cut_over)
    assert error_of(check(client, key, {"token": token}))["code"] == "token_expired"


def test_a_token_for_an_unknown_reader_is_a_404(client: FlaskClient, key: str) -> None:
    response = issue(client, key, "rdr_nobody000000000")

    assert response.status_code == 404
    assert error_of(response)["field"] == "reader_id"


@pytest.mark.parametrize(
    ("body", "field"), [({}, "reader_id"), ({"reader_id": 5}, "reader_id"), ({"ip": "::1"}, "ip")]
)
def test_a_bad_token_request_is_a_400_naming_the_field(
    client: FlaskClient, key: str, body: dict[str, Any], field: str
) -> None:
    response = client.post("/api/v1/tokens", json=body, headers=auth(key))

    assert response.status_code == 400
    assert error_of(response)["field"] == field


def test_token_issue_is_rate_limited_per_key(
    make_key: KeyMaker, client: FlaskClient, tick: FakeMonotonic
) -> None:
    client.application.config["RATELIMIT_API"] = "2 per minute"
    reader = _committed(_subscribed())
    first, second = make_key(), make_key(name="Other")

    statuses = [issue(client, first, reader.public_id).status_code for _ in range(3)]

    assert statuses == [201, 201, 429]
    limited = issue(client, first, reader.public_id)
    assert error_of(limited)["code"] == "too_many_requests"
    assert "Retry-After" in limited.headers
    assert issue(client, second, reader.public_id).status_code == 201


def test_token_issues_and_look_ups_share_one_budget_per_key(
    make_key: KeyMaker, client: FlaskClient, tick: FakeMonotonic
) -> None:
    client.application.config["RATELIMIT_API"] = "3 per minute"
    reader = _committed(_subscribed(reader=factories.reader(email="ada@example.org")))
    first, second = make_key(), make_key(name="Other")

    statuses = [
        issue(client, first, reader.public_id).status_code,
        client.get(f"/api/v1/readers/{reader.public_id}", headers=auth(first)).status_code,
        client.get("/api/v1/readers?email=ada@example.org", headers=auth(first)).status_code,
        # the same key, spelt differently, is the same budget
        client.get(
            f"/api/v1/readers/{reader.public_id}", headers={"Authorization": f"bearer  {first} "}
        ).status_code,
        issue(client, first, reader.public_id).status_code,
    ]

    assert statuses == [201, 200, 200, 429, 429]
    assert issue(client, second, reader.public_id).status_code == 201
    entitlement_check = client.get(
        f"/api/v1/readers/{reader.public_id}/entitlement", headers=auth(first)
    )
    assert entitlement_check.status_code == 200  # entitlement checks are not limited


# Reader look-ups ---------------------------------------------------------------------------


def test_support_looks_a_reader_up_by_id(client: FlaskClient, key: str) -> None:
    trial = factories.TrialFactory(
        reader=factories.reader(email="ada@example.org", name="Ada", country="FR")
    )
    reader = _committed(trial.reader)

    response = client.get(f"/api/v1/readers/{reader.public_id}", headers=auth(key))

    assert response.status_code == 200
    assert response.get_json() == {
        "reader_id": reader.public_id,
        "email": "ada@example.org",
        "name": "Ada",
        "country": "FR",
        "verified": True,
        "created_at": at(START - timedelta(days=30)),
        "trial": {
            "status": "active",
            "started_at": at(START),
            "ends_at": at(START + timedelta(days=14)),
        },
        "entitlement": entitlement(client, key, reader),
    }


def test_a_trial_whose_time_is_over_is_expired_in_the_look_up_before_tick_runs(
    client: FlaskClient, key: str, clock: FixedClock
) -> None:
    trial = factories.TrialFactory(reader=factories.reader(email="ada@example.org"))
    reader = _committed(trial.reader)

    clock.advance(timedelta(days=14))
    body = client.get(f"/api/v1/readers/{reader.public_id}", headers=auth(key)).get_json()

    assert body["trial"]["status"] == "expired"
    assert body["entitlement"]["reason"] == "trial_expired"
    clock.advance(timedelta(seconds=-1))
    body = client.get(f"/api/v1/readers/{reader.public_id}", headers=auth(key)).get_json()
    assert body["trial"]["status"] == "active"


def test_support_looks_a_reader_up_by_normalised_email(client: FlaskClient, key: str) -> None:
    reader = _committed(factories.reader(email="ada@example.org", email_verified_at=None))

    response = client.get(
        "/api/v1/readers", query_string={"email": "  Ada@Example.ORG "}, headers=auth(key)
    )

    assert response.status_code == 200
    body = response.get_json()
    assert body["reader_id"] == reader.public_id
    assert body["verified"] is False
    assert body["trial"] is None
    assert body["entitlement"]["reason"] == "email_unverified"


def test_an_unknown_email_is_a_404_naming_email(client: FlaskClient, key: str) -> None:
    response = client.get(
        "/api/v1/readers", query_string={"email": "nobody@example.org"}, headers=auth(key)
    )

    assert response.status_code == 404
    assert error_of(response) == {
        "code": "reader_not_found",
        "message": "No reader has this e-mail address.",
        "field": "email",
    }


@pytest.mark.parametrize("query", [{}, {"email": ""}, {"email": "not-an-address"}])
def test_a_missing_or_bad_email_is_a_400_naming_email(
    client: FlaskClient, key: str, query: dict[str, str]
) -> None:
    response = client.get("/api/v1/readers", query_string=query, headers=auth(key))

    assert response.status_code == 400
    assert error_of(response)["field"] == "email"


@pytest.mark.parametrize("email", ["a@b.test", '"a b"@example.org', "a@[192.0.2.1]", "a@b"])
def test_an_address_sign_up_would_refuse_is_no_reader_s_a_404(
    client: FlaskClient, key: str, email: str
) -> None:
    response = client.get("/api/v1/readers", query_string={"email": email}, headers=auth(key))

    assert response.status_code == 404
    assert error_of(response)["field"] == "email"


def test_an_over_long_email_is_a_400_naming_email(client: FlaskClient, key: str) -> None:
    email = "a" * 250 + "@b.org"
    response = client.get("/api/v1/readers", query_string={"email": email}, headers=auth(key))

    assert response.status_code == 400
    assert error_of(response)["field"] == "email"


def test_an_unknown_reader_id_lookup_is_a_404(client: FlaskClient, key: str) -> None:
    response = client.get("/api/v1/readers/rdr_nobody000000000", headers=auth(key))

    assert response.status_code == 404
    assert error_of(response)["code"] == "reader_not_found"


# Keys and scopes ---------------------------------------------------------------------------

ENDPOINTS: list[tuple[str, str, dict[str, Any] | None, str]] = [
    ("GET", "/api/v1/readers/rdr_x/entitlement", None, "entitlements:read"),
    ("GET", "/api/v1/entitlement?ip=192.0.2.1", None, "entitlements:read"),
    ("POST", "/api/v1/entitlement/check", {"ip": "192.0.2.1"}, "entitlements:read"),
    ("POST", "/api/v1/tokens", {"reader_id": "rdr_x"}, "tokens:issue"),
    ("GET", "/api/v1/readers/rdr_x", None, "readers:read"),
    ("GET", "/api/v1/readers?email=a@example.org", None, "readers:read"),
]


def call(client: FlaskClient, method: str, path: str, body: Any, headers: dict[str, str]) -> Any:
    return client.open(path, method=method, json=body, headers=headers)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer tg_AAAAAAAA." + "A" * 43},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "tg_AAAAAAAA." + "A" * 43},
    ],
    ids=["no header", "no key", "unknown key", "basic auth", "no scheme"],
)
@pytest.mark.parametrize(("method", "path", "body", "scope"), ENDPOINTS)
def test_a_missing_or_unknown_key_is_a_401(
    client: FlaskClient,
    key: str,
    headers: dict[str, str],
    method: str,
    path: str,
    body: Any,
    scope: str,
) -> None:
    response = call(client, method, path, body, headers)

    assert response.status_code == 401
    assert error_of(response)["code"] == "invalid_api_key"
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="tollgate"'


def test_a_key_with_a_known_prefix_and_a_wrong_secret_is_a_401(
    client: FlaskClient, key: str
) -> None:
    prefix, secret = key.split(".")

    response = client.get(
        "/api/v1/entitlement?ip=192.0.2.1", headers=auth(f"{prefix}.{secret[::-1]}")
    )

    assert response.status_code == 401


def test_the_bearer_scheme_is_case_insensitive(client: FlaskClient, key: str) -> None:
    response = client.get("/api/v1/entitlement?ip=::1", headers={"Authorization": f"bearer {key}"})

    assert response.status_code == 200


@pytest.mark.parametrize(("method", "path", "body", "scope"), ENDPOINTS)
def test_a_key_without_the_scope_is_a_403(
    client: FlaskClient,
    make_key: KeyMaker,
    tick: FakeMonotonic,
    method: str,
    path: str,
    body: Any,
    scope: str,
) -> None:
    others = [s for s in ALL_SCOPES if s != scope]
    response = call(client, method, path, body, auth(make_key(others)))

    assert response.status_code == 403
    assert error_of(response) == {
        "code": "insufficient_scope",
        "message": f"This API key lacks the scope {scope}.",
        "field": None,
    }


def _revoke_all(session: Session, clock: FixedClock) -> None:
    for api_client in session.scalars(select(ApiClient)):
        api_clients.revoke(api_client, now=clock.now())
    session.commit()


def test_a_revoked_key_is_a_401_once_the_cache_bound_has_passed(
    client: FlaskClient, key: str, session: Session, clock: FixedClock, tick: FakeMonotonic
) -> None:
    path = "/api/v1/entitlement?ip=192.0.2.1"
    assert client.get(path, headers=auth(key)).status_code == 200
    _revoke_all(session, clock)

    tick.value += 4.9
    assert client.get(path, headers=auth(key)).status_code == 200
    tick.value += 0.1
    response = client.get(path, headers=auth(key))

    assert response.status_code == 401
    assert error_of(response)["code"] == "invalid_api_key"


def test_a_rotated_key_is_a_401_once_the_cache_bound_has_passed(
    client: FlaskClient, key: str, session: Session, tick: FakeMonotonic
) -> None:
    path = "/api/v1/entitlement?ip=192.0.2.1"
    assert client.get(path, headers=auth(key)).status_code == 200
    new_key = api_clients.rotate(session, session.scalars(select(ApiClient)).one())
    session.commit()

    assert client.get(path, headers=auth(new_key)).status_code == 200
    tick.value += 5
    assert client.get(path, headers=auth(key)).status_code == 401
    assert client.get(path, headers=auth(new_key)).status_code == 200


def _last_used(session: Session) -> datetime | None:
    session.expire_all()
    return session.scalars(select(ApiClient.last_used_at)).one()


def test_api_calls_record_last_used_at_most_once_a_minute(
    client: FlaskClient, key: str, session: Session, clock: FixedClock
) -> None:
    path = "/api/v1/entitlement?ip=192.0.2.1"
    assert _last_used(session) is None

    client.get(path, headers=auth(key))
    assert _last_used(session) == START
    clock.advance(seconds=59)
    client.get(path, headers=auth(key))
    assert _last_used(session) == START
    clock.advance(seconds=1)
    client.get(path, headers=auth(key))
    assert _last_used(session) == START + timedelta(minutes=1)


def test_the_openapi_document_needs_no_key(client: FlaskClient) -> None:
    response = client.get("/api/v1/openapi.json")

    assert response.status_code == 200
    assert response.get_json()["openapi"] == "3.1.0"


def test_an_unknown_api_path_answers_with_the_json_error_shape(
    client: FlaskClient, key: str
) -> None:
    response = client.get("/api/v1/nothing-here", headers=auth(key))

    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"


def test_api_posts_need_no_csrf_token(key: str, client: FlaskClient) -> None:
    assert client.application.config.get("WTF_CSRF_ENABLED", True) is True

    response = check(client, key, {"ip": "192.0.2.1"})

    assert response.status_code == 200
