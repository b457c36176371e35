"""The Stripe webhook intake: signature, storage, idempotency, failure and replay.

The real handlers are not used: a test-only handler, registered for made-up event types, writes an
audit entry per call, so every effect can be counted.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

import webhooks.handlers  # noqa: F401 - the real table is filled before the tests add to it
from billing import db
from billing.clock import FixedClock
from billing.models import AuditLog, WebhookEvent, WebhookEventStatus
from billing.services import audit
from webhooks.registry import HANDLERS, EventContext, Registration
from webhooks.verify import sign

SECRET = "whsec_test_intake_current"
OLD_SECRET = "whsec_test_intake_previous"
COUNTED = "tollgate.test.counted"
BROKEN = "tollgate.test.broken"
FLAKY = "tollgate.test.flaky"
UNKNOWN = "tollgate.test.nobody_listens"


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    """The test app, with two webhook secrets configured (the new one first, as in a rotation)."""
    app_config["STRIPE_WEBHOOK_SECRETS"] = [SECRET, OLD_SECRET]
    return app_config


def count_effect(context: EventContext) -> None:
    """The test handler: one audit entry per call."""
    audit.record(
        context.session,
        now=context.now,
        actor="stripe",
        action="test.counted",
        details={"event": context.event_id},
    )


def count_then_fail(context: EventContext) -> None:
    """Write the effect (and send it to the database), then break."""
    count_effect(context)
    context.session.flush()
    raise RuntimeError("the handler broke")


@pytest.fixture
def test_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register the test handlers for the made-up event types; they are removed afterwards."""
    monkeypatch.setitem(HANDLERS, COUNTED, Registration(count_effect, why="counts deliveries"))
    monkeypatch.setitem(HANDLERS, BROKEN, Registration(count_then_fail, why="always fails"))


def make_event(event_type: str = COUNTED, *, created: int = 1_795_000_000) -> dict[str, Any]:
    """A Stripe-shaped event with a fresh id."""
    return {
        "id": f"evt_test_{uuid.uuid4().hex[:16]}",
        "object": "event",
        "type": event_type,
        "created": created,
        "livemode": False,
        "data": {"object": {"id": "obj_test_1", "object": "test"}},
    }


def now_ts(clock: FixedClock) -> int:
    """The clock's time as a Unix timestamp, as Stripe puts it in the signature."""
    return int(clock.now().timestamp())


def deliver(
    client: FlaskClient,
    body: dict[str, Any] | bytes,
    clock: FixedClock,
    *,
    secret: str = SECRET,
    offset: int = 0,
) -> TestResponse:
    """POST ``body`` to the intake, signed as Stripe would ``offset`` seconds from now."""
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    header = sign(payload, secret, now_ts(clock) + offset)
    return client.post(
        "/webhooks/stripe",
        data=payload,
        headers={"Stripe-Signature": header},
        content_type="application/json",
    )


def effects(session: Session) -> int:
    """How many times a test handler wrote its effect (and it stayed written)."""
    return session.scalar(
        select(func.count()).select_from(AuditLog).where(AuditLog.action == "test.counted")
    )


def stored_events(session: Session) -> int:
    """How many events the intake stored."""
    return session.scalar(select(func.count()).select_from(WebhookEvent))


def stored(session: Session, event: dict[str, Any]) -> WebhookEvent:
    """The stored row of ``event``, read afresh."""
    session.expire_all()
    row = session.scalar(select(WebhookEvent).where(WebhookEvent.stripe_event_id == event["id"]))
    assert row is not None, f"{event['id']} was not stored"
    return row


def require_postgres() -> None:
    """Fail (not skip) a PostgreSQL-only test run on another database."""
    if db.engine().dialect.name != "postgresql":
        pytest.fail("run with TEST_DATABASE_URL pointing at PostgreSQL (make test does)")


def replay(runner: FlaskCliRunner, *args: str) -> Any:
    """Run ``flask billing replay-events`` with ``args``."""
    return runner.invoke(args=["billing", "replay-events", *args])


# --- signature ----------------------------------------------------------------------------------

Tamper = Callable[[bytes, int], tuple[bytes, dict[str, str]]]


def _wrong_secret(body: bytes, ts: int) -> tuple[bytes, dict[str, str]]:
    return body, {"Stripe-Signature": sign(body, "whsec_someone_else", ts)}


def _no_header(body: bytes, ts: int) -> tuple[bytes, dict[str, str]]:
    return body, {}


def _stale(body: bytes, ts: int) -> tuple[bytes, dict[str, str]]:
    return body, {"Stripe-Signature": sign(body, SECRET, ts - 301)}


def _future(body: bytes, ts: int) -> tuple[bytes, dict[str, str]]:
    return body, {"Stripe-Signature": sign(body, SECRET, ts + 301)}


def _tampered(body: bytes, ts: int) -> tuple[bytes, dict[str, str]]:
    header = sign(body, SECRET, ts)
    return body.replace(b"obj_test_1", b"obj_test_2"), {"Stripe-Signature": header}


def _garbled_header(body: bytes, ts: int) -> tuple[bytes, dict[str, str]]:
    return body, {"Stripe-Signature": f"t=soon,v1={'0' * 64}"}


@pytest.mark.parametrize(
    "tamper",
    [_wrong_secret, _no_header, _stale, _future, _tampered, _garbled_header],
    ids=["wrong secret", "missing header", "stale", "future", "tampered body", "garbled header"],
)
def test_a_delivery_whose_signature_does_not_verify_is_refused_and_nothing_is_stored(
    client: FlaskClient,
    session: Session,
    clock: FixedClock,
    test_handlers: None,
    tamper: Tamper,
) -> None:
    body, headers = tamper(json.dumps(make_event()).encode(), now_ts(clock))
    response = client.post(
        "/webhooks/stripe", data=body, headers=headers, content_type="application/json"
    )
    assert response.status_code == 400
    assert response.get_json() == {
        "error": {
            "code": "invalid_signature",
            "message": "The Stripe signature does not verify.",
            "field": None,
        }
    }
    assert stored_events(session) == 0
    assert effects(session) == 0


@pytest.mark.parametrize("offset", [-300, 300], ids=["300 s old", "300 s ahead"])
def test_a_signature_exactly_at_the_tolerance_still_verifies(
    client: FlaskClient, session: Session, clock: FixedClock, test_handlers: None, offset: int
) -> None:
    assert deliver(client, make_event(), clock, offset=offset).status_code == 200
    assert effects(session) == 1


@pytest.mark.parametrize("secret", [SECRET, OLD_SECRET], ids=["new secret", "old secret"])
def test_during_a_secret_rotation_events_signed_with_either_secret_verify(
    client: FlaskClient, session: Session, clock: FixedClock, test_handlers: None, secret: str
) -> None:
    event = make_event()
    response = deliver(client, event, clock, secret=secret)
    assert response.status_code == 200
    assert response.get_json() == {"received": True, "outcome": "processed"}
    assert stored(session, event).status == WebhookEventStatus.PROCESSED


def test_a_header_with_several_signatures_verifies_when_one_of_them_matches(
    client: FlaskClient, session: Session, clock: FixedClock, test_handlers: None
) -> None:
    event = make_event()
    body = json.dumps(event).encode()
    ts = now_ts(clock)
    good = sign(body, OLD_SECRET, ts).split(",")[1]
    header = f"t={ts},v1={'f' * 64},{good}"
    response = client.post(
        "/webhooks/stripe",
        data=body,
        headers={"Stripe-Signature": header},
        content_type="application/json",
    )
    assert response.status_code == 200
    assert effects(session) == 1


def test_with_no_secret_configured_every_delivery_is_refused(
    app: Flask, client: FlaskClient, session: Session, clock: FixedClock, test_handlers: None
) -> None:
    app.config["STRIPE_WEBHOOK_SECRETS"] = []
    assert deliver(client, make_event(), clock).status_code == 400
    assert stored_events(session) == 0


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'{"type": "tollgate.test.counted"}',
        b'{"id": 7}',
        b'{"id": "evt_1", "type": "tollgate.test.counted", "created": "yesterday"}',
        b'{"id": "evt_1", "type": "' + b"x" * 129 + b'", "created": 1}',
        b'{"id": "evt_1", "created": 1}',
    ],
    ids=[
        "broken JSON",
        "not UTF-8",
        "a list",
        "no id",
        "an id that is no event id",
        "a creation time that is no number",
        "a type too long to be Stripe's",
        "no type",
    ],
)
def test_a_body_that_is_not_a_stripe_event_is_refused_even_with_a_valid_signature(
    client: FlaskClient, session: Session, clock: FixedClock, test_handlers: None, body: bytes
) -> None:
    response = deliver(client, body, clock)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_payload"
    assert stored_events(session) == 0


# --- storing and handling -----------------------------------------------------------------------


def test_an_event_of_a_type_nobody_listens_to_is_stored_and_answered_200_as_ignored(
    client: FlaskClient, session: Session, clock: FixedClock
) -> None:
    event = make_event(UNKNOWN)
    response = deliver(client, event, clock)
    assert response.status_code == 200
    assert response.get_json() == {"received": True, "outcome": "ignored"}
    row = stored(session, event)
    assert row.status == WebhookEventStatus.IGNORED
    assert row.type == UNKNOWN
    assert row.payload == event
    assert row.attempts == 1
    assert row.processed_at is not None


def test_a_handled_event_is_stored_with_its_payload_and_marked_processed(
    client: FlaskClient, session: Session, clock: FixedClock, test_handlers: None
) -> None:
    event = make_event()
    response = deliver(client, event, clock)
    assert response.status_code == 200
    assert response.get_json() == {"received": True, "outcome": "processed"}
    row = stored(session, event)
    assert row.status == WebhookEventStatus.PROCESSED
    assert row.payload == event
    assert row.attempts == 1
    assert row.last_error is None
    assert row.processed_at == clock.now()
    assert effects(session) == 1


def test_the_same_event_delivered_a_thousand_times_has_one_effect(
    client: FlaskClient, session: Session, clock: FixedClock, test_handlers: None
) -> None:
    event = make_event()
    outcomes = [deliver(client, event, clock).get_json()["outcome"] for _ in range(1000)]
    assert outcomes[0] == "processed"
    assert set(outcomes[1:]) == {"duplicate"}
    assert effects(session) == 1
    assert stored_events(session) == 1
    row = stored(session, event)
    assert row.status == WebhookEventStatus.PROCESSED
    assert row.attempts == 1


@pytest.mark.postgres_only
def test_the_same_event_delivered_concurrently_from_many_threads_has_one_effect(
    app: Flask, session: Session, clock: FixedClock, test_handlers: None
) -> None:
    require_postgres()
    event = make_event()
    threads_count, deliveries = 8, 25
    barrier = threading.Barrier(threads_count)
    statuses: list[int] = []
    outcomes: list[str] = []
    errors: list[BaseException] = []

    def hammer() -> None:
        own_client = app.test_client()
        try:
            barrier.wait(timeout=10)
            for _ in range(deliveries):
                response = deliver(own_client, event, clock)
                statuses.append(response.status_code)
                outcomes.append(response.get_json()["outcome"])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    assert len(statuses) == threads_count * deliveries
    assert set(statuses) == {200}
    assert outcomes.count("processed") == 1
    assert outcomes.count("duplicate") == threads_count * deliveries - 1
    assert effects(session) == 1
    assert stored_events(session) == 1
    row = stored(session, event)
    assert row.status == WebhookEventStatus.PROCESSED
    assert row.attempts == 1


# --- failures -----------------------------------------------------------------------------------


def test_a_handler_that_raises_leaves_nothing_written_records_the_error_and_answers_500(
    client: FlaskClient, session: Session, clock: FixedClock, test_handlers: None
) -> None:
    event = make_event(BROKEN)
    response = deliver(client, event, clock)
    assert response.status_code == 500
    assert response.get_json() == {"received": True, "outcome": "failed"}
    assert effects(session) == 0
    row = stored(session, event)
    assert row.status == WebhookEventStatus.FAILED
    assert row.last_error == "RuntimeError: the handler broke"
    assert row.attempts == 1
    assert row.processed_at is None


def test_a_redelivery_of_a_failed_event_retries_it(
    client: FlaskClient,
    session: Session,
    clock: FixedClock,
    test_handlers: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    event = make_event(BROKEN)
    assert deliver(client, event, clock).status_code == 500
    clock.advance(minutes=5)
    assert deliver(client, event, clock).status_code == 500
    assert stored(session, event).attempts == 2
    assert effects(session) == 0

    monkeypatch.setitem(HANDLERS, BROKEN, Registration(count_effect, why="fixed"))
    clock.advance(minutes=30)
    response = deliver(client, event, clock)
    assert response.status_code == 200
    assert response.get_json()["outcome"] == "processed"
    row = stored(session, event)
    assert (row.status, row.attempts, row.last_error) == (WebhookEventStatus.PROCESSED, 3, None)
    assert effects(session) == 1


def test_a_failed_event_fixed_and_replayed_from_the_cli_takes_effect_exactly_once(
    client: FlaskClient,
    runner: FlaskCliRunner,
    session: Session,
    clock: FixedClock,
    test_handlers: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    event = make_event(BROKEN)
    assert deliver(client, event, clock).status_code == 500
    assert deliver(client, event, clock).status_code == 500
    assert (stored(session, event).attempts, effects(session)) == (2, 0)

    monkeypatch.setitem(HANDLERS, BROKEN, Registration(count_effect, why="fixed"))
    result = replay(runner, "--failed")
    assert result.exit_code == 0, result.output
    assert f"[1/1] {event['id']} {BROKEN}: processed" in result.output
    assert "1 processed, 0 ignored, 0 already done, 0 failed" in result.output
    assert effects(session) == 1
    row = stored(session, event)
    assert (row.status, row.attempts, row.last_error) == (WebhookEventStatus.PROCESSED, 3, None)

    assert deliver(client, event, clock).get_json()["outcome"] == "duplicate"
    assert "No failed events" in replay(runner, "--failed").output
    assert effects(session) == 1


@pytest.mark.postgres_only
def test_a_failed_attempt_never_marks_failed_an_event_a_concurrent_delivery_handled(
    app: Flask,
    runner: FlaskCliRunner,
    session: Session,
    clock: FixedClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    require_postgres()
    calls = itertools.count()
    calls_lock = threading.Lock()
    first_in_handler = threading.Event()

    def flaky(context: EventContext) -> None:
        with calls_lock:
            first = next(calls) == 0
        if first:
            first_in_handler.set()
            time.sleep(0.5)  # the second delivery now waits for the event's row lock
            raise RuntimeError("the first attempt broke")
        count_effect(context)

    monkeypatch.setitem(HANDLERS, FLAKY, Registration(flaky, why="fails once"))
    event = make_event(FLAKY)
    outcomes: dict[str, tuple[int, str]] = {}

    def first() -> None:
        response = deliver(app.test_client(), event, clock)
        outcomes["first"] = (response.status_code, response.get_json()["outcome"])

    def second() -> None:
        first_in_handler.wait(timeout=10)
        response = deliver(app.test_client(), event, clock)
        outcomes["second"] = (response.status_code, response.get_json()["outcome"])

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert outcomes == {"first": (500, "failed"), "second": (200, "processed")}
    assert stored(session, event).status == WebhookEventStatus.PROCESSED
    assert effects(session) == 1
    assert "No failed events" in replay(runner, "--failed").output
    assert effects(session) == 1


# --- flask billing replay-events ----------------------------------------------------------------


@pytest.mark.parametrize("args", [[], ["--failed", "--id", "evt_x"]], ids=["neither", "both"])
def test_replay_events_needs_exactly_one_of_failed_or_id(
    runner: FlaskCliRunner, args: list[str]
) -> None:
    result = replay(runner, *args)
    assert result.exit_code == 2
    assert "exactly one of --failed or --id" in result.output


def test_replay_events_refuses_an_id_that_was_never_stored(runner: FlaskCliRunner) -> None:
    result = replay(runner, "--id", "evt_never_seen")
    assert result.exit_code == 2
    assert "evt_never_seen" in result.output


def test_replay_events_by_id_leaves_a_processed_event_alone_and_says_so(
    client: FlaskClient,
    runner: FlaskCliRunner,
    session: Session,
    clock: FixedClock,
    test_handlers: None,
) -> None:
    event = make_event()
    deliver(client, event, clock)
    result = replay(runner, "--id", event["id"])
    assert result.exit_code == 0, result.output
    assert f"{event['id']} ({COUNTED}) is already processed: nothing to do." in result.output
    assert effects(session) == 1
    assert stored(session, event).attempts == 1


def test_replay_events_by_id_handles_a_failed_event_once_fixed(
    client: FlaskClient,
    runner: FlaskCliRunner,
    session: Session,
    clock: FixedClock,
    test_handlers: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    event, other = make_event(BROKEN), make_event(BROKEN)
    deliver(client, event, clock)
    deliver(client, other, clock)
    monkeypatch.setitem(HANDLERS, BROKEN, Registration(count_effect, why="fixed"))
    result = replay(runner, "--id", event["id"])
    assert result.exit_code == 0, result.output
    assert "1 processed, 0 ignored, 0 already done, 0 failed" in result.output
    assert stored(session, event).status == WebhookEventStatus.PROCESSED
    assert stored(session, other).status == WebhookEventStatus.FAILED
    assert effects(session) == 1


def test_replay_events_of_events_still_failing_records_the_attempt_and_exits_1(
    client: FlaskClient,
    runner: FlaskCliRunner,
    session: Session,
    clock: FixedClock,
    test_handlers: None,
) -> None:
    event = make_event(BROKEN)
    deliver(client, event, clock)
    result = replay(runner, "--failed")
    assert result.exit_code == 1
    assert f"{event['id']} {BROKEN}: failed: RuntimeError: the handler broke" in result.output
    assert "0 processed, 0 ignored, 0 already done, 1 failed" in result.output
    row = stored(session, event)
    assert (row.status, row.attempts) == (WebhookEventStatus.FAILED, 2)
    assert effects(session) == 0


def test_replay_events_failed_replays_every_failed_event_and_counts_each_outcome(
    client: FlaskClient,
    runner: FlaskCliRunner,
    session: Session,
    clock: FixedClock,
    test_handlers: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fixed, dropped, still_broken = (make_event(t) for t in (BROKEN, FLAKY, COUNTED))
    ok = make_event(COUNTED)
    monkeypatch.setitem(HANDLERS, FLAKY, Registration(count_then_fail, why="fails for now"))
    monkeypatch.setitem(HANDLERS, COUNTED, Registration(count_then_fail, why="fails for now"))
    for event in (fixed, dropped, still_broken):
        assert deliver(client, event, clock).status_code == 500
    monkeypatch.setitem(HANDLERS, COUNTED, Registration(count_effect, why="counts"))
    assert deliver(client, ok, clock).status_code == 200
    monkeypatch.setitem(HANDLERS, BROKEN, Registration(count_effect, why="fixed"))
    monkeypatch.delitem(HANDLERS, FLAKY)
    monkeypatch.setitem(HANDLERS, COUNTED, Registration(count_then_fail, why="broken again"))

    result = replay(runner, "--failed")
    assert result.exit_code == 1
    assert "Replaying 3 failed event(s)" in result.output
    assert "1 processed, 1 ignored, 0 already done, 1 failed" in result.output
    statuses = {e["id"]: stored(session, e).status for e in (fixed, dropped, still_broken, ok)}
    assert statuses == {
        fixed["id"]: WebhookEventStatus.PROCESSED,
        dropped["id"]: WebhookEventStatus.IGNORED,
        still_broken["id"]: WebhookEventStatus.FAILED,
        ok["id"]: WebhookEventStatus.PROCESSED,
    }
    assert effects(session) == 2
