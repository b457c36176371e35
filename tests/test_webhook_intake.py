"""The Stripe webhook intake and the worker behind it: signature, envelope, size, storage,
idempotency, retries with backoff, leases, the dead state and replay.

The real handlers are not used: a test-only handler, registered for made-up event types, writes an
audit entry per call, so every effect can be counted.
"""

from __future__ import annotations

import io
import json
import threading
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

import webhooks.handlers  # noqa: F401 - the real table is filled before the tests add to it
from billing import db
from billing.clock import FixedClock
from billing.models import AuditLog, WebhookEvent, WebhookEventStatus
from billing.worker import Tally, Worker
from tests.worker_process import count_effect
from webhooks import store
from webhooks.process import Outcome, process
from webhooks.registry import HANDLERS, EventContext, Registration
from webhooks.verify import sign

SECRET = "whsec_test_intake_current"
OLD_SECRET = "whsec_test_intake_previous"
COUNTED = "tollgate.test.counted"
BROKEN = "tollgate.test.broken"
FLAKY = "tollgate.test.flaky"
UNKNOWN = "tollgate.test.nobody_listens"


MAX_ATTEMPTS = 4
LIMIT = 8192


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    """The test app, with two webhook secrets configured (the new one first, as in a rotation),
    a small body limit, four attempts per event, retries after 10, 20, 40 s and a 2 min lease."""
    app_config["STRIPE_WEBHOOK_SECRETS"] = [SECRET, OLD_SECRET]
    app_config["WEBHOOK_MAX_BYTES"] = LIMIT
    app_config["WORKER_MAX_ATTEMPTS"] = MAX_ATTEMPTS
    app_config["WORKER_RETRY_BASE"] = 10
    app_config["WORKER_RETRY_CAP"] = 3600
    app_config["WORKER_LEASE"] = 120
    return app_config


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


def claim_as(worker: str, clock: FixedClock) -> list[int]:
    """Claim every due event for ``worker`` (two-minute lease) and commit, as a worker does
    before handling; the claimed row ids."""
    with db.new_session() as own:
        claimed = store.claim_due(
            own, now=clock.now(), worker=worker, lease=timedelta(minutes=2), limit=100
        )
        own.commit()
    return claimed


def work(app: Flask, name: str = "worker-1") -> Tally:
    """One worker pass over everything due now (``flask billing worker --once``)."""
    return Worker(app, name=name).run_once()


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
        b'{"id": "evt_1", "type": "tollgate.test.counted", "created": 1000000000000}',
        b'{"id": "evt_1", "type": "tollgate.test.counted", "created": 1e12}',
        b'{"id": "evt_1", "type": "tollgate.test.counted", "created": 1e20}',
        b'{"id": "evt_1", "type": "tollgate.test.counted", "created": -1000000000000}',
        b'{"id": "evt_1", "type": "tollgate.test.counted", "created": true}',
        b'{"id": "evt_1\\u0000", "type": "tollgate.test.counted", "created": 1795000000}',
        b'{"id": "evt_1", "type": "tollgate.test\\u0000", "created": 1795000000}',
        b'{"id": "evt_\\ud800", "type": "tollgate.test.counted", "created": 1795000000}',
        b'{"id": "evt_1", "type": "tollgate.\\udfff", "created": 1795000000}',
        b'{"id": "evt_1", "type": "tollgate.test.counted", "created": 1795000000, "data": {"object": {"id": "x", "name": "\\ud83d"}}}',
        b'{"id": "evt_1", "type": "tollgate.test.counted", "created": 1795000000, "n": NaN}',
        b'{"id": "evt_1", "type": "tollgate.test.counted", "created": 1795000000, "n": Infinity}',
        b'{"id": "evt_1", "type": "tollgate.test.counted", "created": 1795000000, "n": -Infinity}',
        b'{"id": "evt_1", "type": "tollgate.test.counted", "created": 1795000000, "n": 1e400}',
        b'{"id": "evt_1", "type": "tollgate.test.counted", "created": 1795000000, "data": '
        + b"[" * 2000
        + b"]" * 2000
        + b"}",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"id": "evt_1", "type": "tollgate.test.counted", "created": 1795000000, "data": []}',
        b'{"id": "evt_1", "type": "tollgate.test.counted", "created": 1795000000, "livemode": "no"}',
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
        "created in the year 33658",
        "created as 1e12",
        "created as 1e20",
        "created before 1940",
        "created as true",
        "a NUL in the id",
        "a NUL in the type",
        "a lone surrogate in the id",
        "a lone surrogate in the type",
        "a lone surrogate in the object",
        "NaN",
        "Infinity",
        "-Infinity",
        "a number too large for a float",
        "2,000 deep in data",
        "100,000 deep",
        "data not an object",
        "livemode not a boolean",
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
    app: Flask,
    client: FlaskClient,
    session: Session,
    clock: FixedClock,
    test_handlers: None,
    body: bytes,
) -> None:
    app.config["WEBHOOK_MAX_BYTES"] = 300_000  # the 100,000-deep body is 200 kB
    response = deliver(client, body, clock)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "invalid_payload"
    assert error["message"].startswith("The body is not a Stripe event")
    assert stored_events(session) == 0
    assert not work(app)


# --- size -----------------------------------------------------------------------------------------


def padded_event(size: int) -> bytes:
    """A valid event whose JSON body is exactly ``size`` bytes."""
    event = make_event()
    event["data"]["object"]["padding"] = ""
    bare = len(json.dumps(event).encode())
    event["data"]["object"]["padding"] = "x" * (size - bare)
    body = json.dumps(event).encode()
    assert len(body) == size
    return body


def test_a_body_at_the_size_limit_is_stored(
    client: FlaskClient, session: Session, clock: FixedClock, test_handlers: None
) -> None:
    response = deliver(client, padded_event(LIMIT), clock)
    assert response.status_code == 200
    assert stored_events(session) == 1


def test_a_body_over_the_size_limit_is_refused_with_413_before_its_signature_is_checked(
    client: FlaskClient, session: Session, clock: FixedClock, test_handlers: None
) -> None:
    signed = deliver(client, padded_event(LIMIT + 1), clock)
    unsigned = client.post(
        "/webhooks/stripe", data=b"x" * 5_000_000, content_type="application/json"
    )
    for response in (signed, unsigned):
        assert response.status_code == 413
        assert response.get_json() == {
            "error": {
                "code": "payload_too_large",
                "message": f"The body is larger than {LIMIT} bytes.",
                "field": None,
            }
        }
    assert stored_events(session) == 0


def test_a_chunked_body_without_a_length_is_cut_at_the_limit(
    client: FlaskClient, session: Session, clock: FixedClock
) -> None:
    body = padded_event(LIMIT + 100)
    response = client.post(
        "/webhooks/stripe",
        input_stream=io.BytesIO(body),
        environ_overrides={"wsgi.input_terminated": True},  # as servers say of a chunked body
        headers={
            "Stripe-Signature": sign(body, SECRET, now_ts(clock)),
            "Transfer-Encoding": "chunked",
        },
        content_type="application/json",
    )
    assert response.status_code == 413
    assert stored_events(session) == 0


# --- storing: the view stores and answers, the worker handles ------------------------------------


def test_a_delivery_is_stored_and_answered_without_being_handled(
    client: FlaskClient, session: Session, clock: FixedClock, test_handlers: None
) -> None:
    event = make_event()
    response = deliver(client, event, clock)
    assert response.status_code == 200
    assert response.get_json() == {"received": True, "outcome": "stored"}
    row = stored(session, event)
    assert (row.status, row.attempts, row.payload) == (WebhookEventStatus.RECEIVED, 0, event)
    assert effects(session) == 0, "nothing is handled inside the request"


@pytest.mark.postgres_only
def test_a_delivery_on_a_pooled_connection_the_database_dropped_is_stored_on_a_fresh_one(
    client: FlaskClient, session: Session, clock: FixedClock, test_handlers: None
) -> None:
    require_postgres()
    first = make_event()
    assert deliver(client, first, clock).status_code == 200
    # The database drops every connection of the intake's pool (as a restart would).
    with db.autocommit_engine().connect() as conn:
        pids = conn.scalars(text("SELECT pg_backend_pid()")).all()
    with db.engine().connect() as admin:
        admin.execute(
            text("SELECT pg_terminate_backend(pid) FROM unnest(:pids) AS pid"), {"pids": pids}
        )
        admin.commit()
    second = make_event()
    response = deliver(client, second, clock)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert stored(session, second).status == WebhookEventStatus.RECEIVED


def test_a_delivery_the_database_cannot_store_gets_503_so_stripe_delivers_it_again(
    app: Flask, client: FlaskClient, session: Session, clock: FixedClock, test_handlers: None
) -> None:
    event = make_event()
    answering = app.extensions["db_autocommit_engine"]
    app.extensions["db_autocommit_engine"] = create_engine(
        "postgresql+psycopg://postgres@127.0.0.1:9/none", connect_args={"connect_timeout": 2}
    )
    try:
        response = deliver(client, event, clock)
    finally:
        app.extensions["db_autocommit_engine"].dispose()
        app.extensions["db_autocommit_engine"] = answering
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "unavailable"
    assert stored_events(session) == 0
    assert deliver(client, event, clock).get_json() == {"received": True, "outcome": "stored"}


def test_an_event_of_a_type_nobody_listens_to_is_stored_and_marked_ignored_by_the_worker(
    app: Flask, client: FlaskClient, session: Session, clock: FixedClock
) -> None:
    event = make_event(UNKNOWN)
    assert deliver(client, event, clock).get_json() == {"received": True, "outcome": "stored"}
    assert work(app).events == {Outcome.IGNORED: 1}
    row = stored(session, event)
    assert row.status == WebhookEventStatus.IGNORED
    assert row.type == UNKNOWN
    assert row.attempts == 1
    assert row.processed_at is not None
    assert (row.locked_by, row.locked_until) == (None, None)


def test_the_worker_handles_a_stored_event_once_and_marks_it_processed(
    app: Flask, client: FlaskClient, session: Session, clock: FixedClock, test_handlers: None
) -> None:
    event = make_event()
    deliver(client, event, clock)
    assert work(app).events == {Outcome.PROCESSED: 1}
    assert not work(app), "nothing is left to do"
    row = stored(session, event)
    assert row.status == WebhookEventStatus.PROCESSED
    assert row.attempts == 1
    assert row.last_error is None
    assert row.processed_at == clock.now()
    assert effects(session) == 1


@pytest.mark.parametrize("offset", [-300, 300], ids=["300 s old", "300 s ahead"])
def test_a_signature_exactly_at_the_tolerance_still_verifies(
    app: Flask,
    client: FlaskClient,
    session: Session,
    clock: FixedClock,
    test_handlers: None,
    offset: int,
) -> None:
    assert deliver(client, make_event(), clock, offset=offset).status_code == 200
    work(app)
    assert effects(session) == 1


@pytest.mark.parametrize("secret", [SECRET, OLD_SECRET], ids=["new secret", "old secret"])
def test_during_a_secret_rotation_events_signed_with_either_secret_verify(
    client: FlaskClient, session: Session, clock: FixedClock, test_handlers: None, secret: str
) -> None:
    event = make_event()
    response = deliver(client, event, clock, secret=secret)
    assert response.status_code == 200
    assert stored(session, event).status == WebhookEventStatus.RECEIVED


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
    assert stored_events(session) == 1


def test_the_same_event_delivered_a_thousand_times_is_stored_once_and_has_one_effect(
    app: Flask, client: FlaskClient, session: Session, clock: FixedClock, test_handlers: None
) -> None:
    event = make_event()
    outcomes = [deliver(client, event, clock).get_json()["outcome"] for _ in range(1000)]
    assert outcomes[0] == "stored"
    assert set(outcomes[1:]) == {"duplicate"}
    work(app)
    assert [deliver(client, event, clock).get_json()["outcome"] for _ in range(3)] == [
        "duplicate"
    ] * 3
    work(app)
    assert effects(session) == 1
    assert stored_events(session) == 1
    row = stored(session, event)
    assert (row.status, row.attempts) == (WebhookEventStatus.PROCESSED, 1)


@pytest.mark.postgres_only
def test_the_same_event_delivered_concurrently_from_many_threads_is_stored_once(
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
    assert outcomes.count("stored") == 1
    assert outcomes.count("duplicate") == threads_count * deliveries - 1
    assert stored_events(session) == 1
    work(app)
    assert effects(session) == 1


# --- events no handler can use --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ({}, "data.object is missing"),
        ({"object": ["obj_1"]}, "data.object is not an object"),
        ({"object": "obj_1"}, "data.object is not an object"),
        ({"object": {"object": "test"}}, "data.object has no id"),
        ({"object": {"id": ""}}, "data.object has no id"),
        ({"object": {"id": 7}}, "data.object has no id"),
    ],
    ids=["no object", "a list", "a string", "no id", "an empty id", "a number as id"],
)
def test_an_event_of_a_handled_type_whose_object_cannot_be_used_is_stored_dead_at_once(
    app: Flask,
    client: FlaskClient,
    runner: FlaskCliRunner,
    session: Session,
    clock: FixedClock,
    test_handlers: None,
    data: dict[str, Any],
    reason: str,
) -> None:
    event = {**make_event(), "data": data}
    response = deliver(client, event, clock)
    assert response.status_code == 200, "Stripe must stop retrying what can never succeed"
    assert response.get_json() == {"received": True, "outcome": "unhandleable"}
    row = stored(session, event)
    assert (row.status, row.last_error) == (WebhookEventStatus.DEAD, f"unhandleable: {reason}")
    assert not work(app), "the worker leaves it alone"
    assert "No failed events" in replay(runner, "--failed").output
    backlog = 'tollgate_webhook_events_backlog{status="dead"} 1.0'
    assert backlog in client.get("/metrics").get_data(as_text=True)

    result = replay(runner, "--dead")
    assert result.exit_code == 1
    assert f"{event['id']} {COUNTED}: dead: unhandleable: {reason}" in result.output
    assert stored(session, event).status == WebhookEventStatus.DEAD
    assert effects(session) == 0


def test_an_unhandleable_event_of_a_type_nobody_listens_to_is_simply_ignored(
    app: Flask, client: FlaskClient, session: Session, clock: FixedClock
) -> None:
    event = {**make_event(UNKNOWN), "data": {}}
    assert deliver(client, event, clock).get_json()["outcome"] == "stored"
    work(app)
    assert stored(session, event).status == WebhookEventStatus.IGNORED


# --- failures, backoff, dead ------------------------------------------------------------------------


def test_a_handler_that_raises_leaves_nothing_written_and_is_retried_with_backoff(
    app: Flask,
    client: FlaskClient,
    session: Session,
    clock: FixedClock,
    test_handlers: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    event = make_event(BROKEN)
    deliver(client, event, clock)
    assert work(app).events == {Outcome.FAILED: 1}
    row = stored(session, event)
    assert (row.status, row.attempts) == (WebhookEventStatus.FAILED, 1)
    assert row.last_error == "RuntimeError: the handler broke"
    assert row.next_attempt_at == clock.now() + timedelta(seconds=10)
    assert row.processed_at is None
    assert effects(session) == 0

    clock.advance(seconds=9)
    assert not work(app), "not due yet"
    clock.advance(seconds=1)
    assert work(app).events == {Outcome.FAILED: 1}
    assert stored(session, event).next_attempt_at == clock.now() + timedelta(seconds=20)

    monkeypatch.setitem(HANDLERS, BROKEN, Registration(count_effect, why="fixed"))
    clock.advance(seconds=20)
    assert work(app).events == {Outcome.PROCESSED: 1}
    row = stored(session, event)
    assert (row.status, row.attempts, row.last_error) == (WebhookEventStatus.PROCESSED, 3, None)
    assert row.next_attempt_at is None
    assert effects(session) == 1


def test_a_redelivery_of_a_failed_event_is_a_duplicate_the_worker_retries_on_its_schedule(
    app: Flask, client: FlaskClient, session: Session, clock: FixedClock, test_handlers: None
) -> None:
    event = make_event(BROKEN)
    deliver(client, event, clock)
    work(app)
    assert deliver(client, event, clock).get_json()["outcome"] == "duplicate"
    assert not work(app)
    assert stored(session, event).attempts == 1


def test_an_event_failing_every_attempt_goes_dead_and_stops_failing_replay_failed(
    app: Flask,
    client: FlaskClient,
    runner: FlaskCliRunner,
    session: Session,
    clock: FixedClock,
    test_handlers: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    event = make_event(BROKEN)
    deliver(client, event, clock)
    outcomes = []
    for _ in range(MAX_ATTEMPTS):
        outcomes.append(dict(work(app).events))
        clock.advance(hours=2)
    assert outcomes == [{Outcome.FAILED: 1}] * (MAX_ATTEMPTS - 1) + [{Outcome.DEAD: 1}]
    row = stored(session, event)
    assert (row.status, row.attempts, row.next_attempt_at) == (
        WebhookEventStatus.DEAD,
        MAX_ATTEMPTS,
        None,
    )
    assert row.last_error == "RuntimeError: the handler broke"
    assert not work(app), "dead: never tried again by itself"

    assert "No failed events to replay." in replay(runner, "--failed").output
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'tollgate_webhook_events_backlog{status="dead"} 1.0' in metrics
    assert f'tollgate_webhook_events_total{{outcome="dead",type="{BROKEN}"}}' in metrics

    still = replay(runner, "--dead")
    assert still.exit_code == 1
    assert "0 processed, 0 ignored, 0 already done or in hand, 0 failed, 1 dead" in still.output
    monkeypatch.setitem(HANDLERS, BROKEN, Registration(count_effect, why="fixed"))
    fixed = replay(runner, "--dead")
    assert fixed.exit_code == 0, fixed.output
    assert f"[1/1] {event['id']} {BROKEN}: processed" in fixed.output
    assert stored(session, event).status == WebhookEventStatus.PROCESSED
    assert effects(session) == 1


# --- leases ---------------------------------------------------------------------------------------


def test_a_claim_whose_worker_died_is_taken_over_after_the_lease_and_handled_once(
    app: Flask, client: FlaskClient, session: Session, clock: FixedClock, test_handlers: None
) -> None:
    event = make_event()
    deliver(client, event, clock)
    [row_id] = claim_as("dies", clock)
    assert not work(app, "other"), "the lease still holds"
    clock.advance(minutes=2)
    assert work(app, "other").events == {Outcome.PROCESSED: 1}
    policy = Worker(app).policy
    assert process(row_id, None, worker="dies", policy=policy) == Outcome.DUPLICATE, (
        "the dead worker, back from a long pause, has lost its claim and does nothing"
    )
    row = stored(session, event)
    assert (row.status, row.attempts) == (WebhookEventStatus.PROCESSED, 2)
    assert effects(session) == 1


def test_a_worker_that_lost_its_claim_while_failing_does_not_mark_the_event_failed(
    app: Flask,
    client: FlaskClient,
    session: Session,
    clock: FixedClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    event = make_event(FLAKY)
    deliver(client, event, clock)
    [row_id] = claim_as("slow", clock)
    clock.advance(minutes=3)
    monkeypatch.setitem(HANDLERS, FLAKY, Registration(count_effect, why="works now"))
    work(app, "other")

    def broken(context: EventContext) -> None:
        raise RuntimeError("the slow attempt broke")

    monkeypatch.setitem(HANDLERS, FLAKY, Registration(broken, why="fails"))
    assert process(row_id, None, worker="slow", policy=Worker(app).policy) == Outcome.DUPLICATE
    row = stored(session, event)
    assert (row.status, row.last_error) == (WebhookEventStatus.PROCESSED, None)
    assert effects(session) == 1


# --- flask billing replay-events ----------------------------------------------------------------


@pytest.mark.parametrize(
    "args", [[], ["--failed", "--id", "evt_x"], ["--dead", "--stuck"]], ids=["none", "two", "two"]
)
def test_replay_events_needs_exactly_one_choice(runner: FlaskCliRunner, args: list[str]) -> None:
    result = replay(runner, *args)
    assert result.exit_code == 2
    assert "exactly one of --failed, --dead, --stuck or --id" in result.output


def test_replay_events_refuses_an_id_that_was_never_stored(runner: FlaskCliRunner) -> None:
    result = replay(runner, "--id", "evt_never_seen")
    assert result.exit_code == 2
    assert "evt_never_seen" in result.output


def test_replay_events_by_id_leaves_a_processed_event_alone_and_says_so(
    app: Flask,
    client: FlaskClient,
    runner: FlaskCliRunner,
    session: Session,
    clock: FixedClock,
    test_handlers: None,
) -> None:
    event = make_event()
    deliver(client, event, clock)
    work(app)
    result = replay(runner, "--id", event["id"])
    assert result.exit_code == 0, result.output
    assert f"{event['id']} ({COUNTED}) is already processed: nothing to do." in result.output
    assert effects(session) == 1
    assert stored(session, event).attempts == 1


def test_replay_events_by_id_handles_a_failed_event_now_whatever_its_schedule(
    app: Flask,
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
    work(app)
    monkeypatch.setitem(HANDLERS, BROKEN, Registration(count_effect, why="fixed"))
    result = replay(runner, "--id", event["id"])
    assert result.exit_code == 0, result.output
    assert "1 processed, 0 ignored, 0 already done or in hand, 0 failed, 0 dead" in result.output
    assert stored(session, event).status == WebhookEventStatus.PROCESSED
    assert stored(session, other).status == WebhookEventStatus.FAILED
    assert effects(session) == 1


def test_replay_events_of_events_still_failing_records_the_attempt_and_exits_1(
    app: Flask,
    client: FlaskClient,
    runner: FlaskCliRunner,
    session: Session,
    clock: FixedClock,
    test_handlers: None,
) -> None:
    event = make_event(BROKEN)
    deliver(client, event, clock)
    work(app)
    result = replay(runner, "--failed")
    assert result.exit_code == 1
    assert f"{event['id']} {BROKEN}: failed: RuntimeError: the handler broke" in result.output
    assert "0 processed, 0 ignored, 0 already done or in hand, 1 failed, 0 dead" in result.output
    row = stored(session, event)
    assert (row.status, row.attempts) == (WebhookEventStatus.FAILED, 2)
    assert effects(session) == 0


def test_replay_events_failed_replays_every_failed_event_and_counts_each_outcome(
    app: Flask,
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
        deliver(client, event, clock)
    assert work(app).events == {Outcome.FAILED: 3}
    monkeypatch.setitem(HANDLERS, COUNTED, Registration(count_effect, why="counts"))
    deliver(client, ok, clock)
    assert work(app).events == {Outcome.PROCESSED: 1}
    monkeypatch.setitem(HANDLERS, BROKEN, Registration(count_effect, why="fixed"))
    monkeypatch.delitem(HANDLERS, FLAKY)
    monkeypatch.setitem(HANDLERS, COUNTED, Registration(count_then_fail, why="broken again"))

    result = replay(runner, "--failed")
    assert result.exit_code == 1
    assert "Replaying 3 failed event(s)" in result.output
    assert "1 processed, 1 ignored, 0 already done or in hand, 1 failed, 0 dead" in result.output
    statuses = {e["id"]: stored(session, e).status for e in (fixed, dropped, still_broken, ok)}
    assert statuses == {
        fixed["id"]: WebhookEventStatus.PROCESSED,
        dropped["id"]: WebhookEventStatus.IGNORED,
        still_broken["id"]: WebhookEventStatus.FAILED,
        ok["id"]: WebhookEventStatus.PROCESSED,
    }
    assert effects(session) == 2


def test_replay_events_stuck_takes_up_events_no_worker_is_getting_on_with(
    app: Flask,
    client: FlaskClient,
    runner: FlaskCliRunner,
    session: Session,
    clock: FixedClock,
    test_handlers: None,
) -> None:
    never_claimed, abandoned, fresh = make_event(), make_event(), make_event()
    deliver(client, never_claimed, clock)
    deliver(client, abandoned, clock)
    claim_as("dies", clock)
    clock.advance(minutes=2)
    deliver(client, fresh, clock)

    result = replay(runner, "--stuck")
    assert result.exit_code == 0, result.output
    assert "Replaying 2 stuck event(s)" in result.output
    statuses = {e["id"]: stored(session, e).status for e in (never_claimed, abandoned, fresh)}
    assert statuses == {
        never_claimed["id"]: WebhookEventStatus.PROCESSED,
        abandoned["id"]: WebhookEventStatus.PROCESSED,
        fresh["id"]: WebhookEventStatus.RECEIVED,
    }
    assert effects(session) == 2
    assert "No stuck events to replay." in replay(runner, "--stuck").output


def test_replay_events_leaves_alone_an_event_a_live_worker_holds(
    app: Flask,
    client: FlaskClient,
    runner: FlaskCliRunner,
    session: Session,
    clock: FixedClock,
    test_handlers: None,
) -> None:
    event = make_event()
    deliver(client, event, clock)
    claim_as("busy", clock)
    result = replay(runner, "--id", event["id"])
    assert result.exit_code == 0, result.output
    assert f"{event['id']} {COUNTED}: a worker has it" in result.output
    assert effects(session) == 0
