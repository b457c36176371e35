"""The decision cache answers without the database, and forgets what changed or ran out."""

from __future__ import annotations

from datetime import timedelta

import pytest
from flask import Flask
from sqlalchemy import event
from sqlalchemy.orm import Session

from billing import db
from billing.clock import FixedClock
from billing.models import EntitlementChange, SubscriptionStatus
from billing.services import trials
from billing.services.decision_cache import DecisionCache
from billing.services.entitlements import Reason
from tests import factories
from tests.helpers import FakeMonotonic


@pytest.fixture
def tick() -> FakeMonotonic:
    return FakeMonotonic()


@pytest.fixture
def cache(tick: FakeMonotonic) -> DecisionCache:
    return DecisionCache(past_due_grace=timedelta(days=7), poll_interval=1.0, monotonic=tick)


@pytest.fixture
def statements(app: Flask) -> list[str]:
    seen: list[str] = []
    event.listen(db.engine(), "before_cursor_execute", lambda *args: seen.append(args[2]))
    return seen


def test_a_second_lookup_is_answered_without_the_database(
    session: Session, cache: DecisionCache, clock: FixedClock, statements: list[str]
) -> None:
    reader = factories.SubscriptionFactory().reader
    session.commit()
    first = cache.lookup(session, reader.public_id, clock.now())
    statements.clear()
    second = cache.lookup(session, reader.public_id, clock.now())
    assert statements == []
    assert first == second
    assert second.decision.reason == Reason.SUBSCRIPTION


def test_a_change_written_elsewhere_reaches_the_cache_after_the_poll_interval(
    app: Flask, session: Session, cache: DecisionCache, clock: FixedClock, tick: FakeMonotonic
) -> None:
    subscription = factories.SubscriptionFactory()
    public_id = subscription.reader.public_id
    session.commit()
    assert cache.lookup(session, public_id, clock.now()).decision.granted

    other = db.new_session()  # another request, process or webhook
    other.get_one(type(subscription), subscription.id).status = SubscriptionStatus.CANCELED
    other.commit()
    other.close()

    assert cache.lookup(session, public_id, clock.now()).decision.granted  # not polled yet
    tick.value += 1.0
    decision = cache.lookup(session, public_id, clock.now()).decision
    assert (decision.granted, decision.reason) == (False, Reason.SUBSCRIPTION_ENDED)


def test_every_process_learns_of_a_change(
    session: Session, clock: FixedClock, tick: FakeMonotonic
) -> None:
    caches = [DecisionCache(past_due_grace=timedelta(days=7), monotonic=tick) for _ in range(2)]
    reader = factories.reader()
    session.commit()
    for cache in caches:
        assert cache.lookup(session, reader.public_id, clock.now()).decision.reason == Reason.NONE
    trials.start_trial(session, reader, now=clock.now(), days=14)
    session.commit()
    tick.value += 1.0
    for cache in caches:
        assert cache.lookup(session, reader.public_id, clock.now()).decision.reason == Reason.TRIAL


def test_a_granted_entry_is_not_used_past_its_until(
    session: Session, cache: DecisionCache, clock: FixedClock
) -> None:
    reader = factories.reader()
    trials.start_trial(session, reader, now=clock.now() - timedelta(days=14, seconds=-10), days=14)
    session.commit()
    assert cache.lookup(session, reader.public_id, clock.now()).decision.granted
    clock.advance(seconds=10)
    assert (
        cache.lookup(session, reader.public_id, clock.now()).decision.reason == Reason.TRIAL_EXPIRED
    )


def test_no_entry_lives_longer_than_the_maximum_age(
    session: Session, cache: DecisionCache, clock: FixedClock, statements: list[str]
) -> None:
    reader = factories.reader()
    session.commit()
    cache.lookup(session, reader.public_id, clock.now())
    clock.advance(seconds=31)
    statements.clear()
    cache.lookup(session, reader.public_id, clock.now())
    assert any("FROM readers" in s for s in statements)


def test_verifying_an_address_is_a_change(
    session: Session, cache: DecisionCache, clock: FixedClock, tick: FakeMonotonic
) -> None:
    grant = factories.GrantFactory(reader__email_verified_at=None)
    session.commit()
    assert (
        cache.lookup(session, grant.reader.public_id, clock.now()).decision.reason
        == Reason.EMAIL_UNVERIFIED
    )
    grant.reader.email_verified_at = clock.now()
    session.commit()
    tick.value += 1.0
    assert (
        cache.lookup(session, grant.reader.public_id, clock.now()).decision.reason
        == Reason.COMPLIMENTARY
    )


def test_writes_that_cannot_change_a_decision_log_nothing(session: Session) -> None:
    reader = factories.reader()
    session.commit()
    before = session.query(EntitlementChange).count()
    reader.name = "Renamed"
    session.commit()
    assert session.query(EntitlementChange).count() == before


def test_an_unknown_reader_is_refused(
    session: Session, cache: DecisionCache, clock: FixedClock
) -> None:
    entry = cache.lookup(session, "rdr_doesnotexist", clock.now())
    assert (entry.reader_id, entry.decision.granted, entry.decision.reason) == (
        None,
        False,
        Reason.NONE,
    )


def test_the_cache_never_holds_more_than_its_maximum(session: Session, clock: FixedClock) -> None:
    cache = DecisionCache(past_due_grace=timedelta(days=7), max_entries=3)
    for number in range(10):
        cache.lookup(session, f"rdr_unknown{number}", clock.now())
        assert len(cache) <= 3
