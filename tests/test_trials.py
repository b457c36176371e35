"""Trial rules and the idempotent ``flask billing tick``."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from flask import Flask
from flask.testing import FlaskCliRunner
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from billing import db
from billing.clock import FixedClock
from billing.models import Trial, TrialStatus
from billing.services import trials
from billing.services.accounts import canonical_email
from tests import factories
from tests.conftest import Outbox


def test_a_verified_reader_starts_a_trial_of_the_configured_length(
    session: Session, clock: FixedClock
) -> None:
    reader = factories.reader()
    trial = trials.start_trial(session, reader, now=clock.now(), days=14)
    assert trial.ends_at - trial.started_at == timedelta(days=14)
    assert trial.is_active(clock.now())
    assert trial.days_left(clock.now()) == 14


def test_an_unverified_reader_cannot_start_a_trial(session: Session, clock: FixedClock) -> None:
    reader = factories.reader(email_verified_at=None)
    with pytest.raises(trials.EmailNotVerified):
        trials.start_trial(session, reader, now=clock.now(), days=14)


def test_a_reader_gets_one_trial_only(session: Session, clock: FixedClock) -> None:
    reader = factories.reader()
    trials.start_trial(session, reader, now=clock.now(), days=14)
    session.refresh(reader)
    with pytest.raises(trials.TrialRefused):
        trials.start_trial(session, reader, now=clock.now(), days=14)


def test_another_account_of_the_same_gmail_person_is_refused(
    session: Session, clock: FixedClock
) -> None:
    first = factories.reader(email="first.last@gmail.com")
    trials.start_trial(session, first, now=clock.now(), days=14)
    second = factories.reader(email="first.last+x@gmail.com")
    assert trials.refusal_reason(session, second) is not None
    with pytest.raises(trials.TrialRefused):
        trials.start_trial(session, second, now=clock.now(), days=14)


def test_an_address_that_had_a_subscription_gets_no_trial_even_after_the_account_is_gone(
    session: Session, clock: FixedClock
) -> None:
    subscription = factories.SubscriptionFactory(customer__reader__email="paid@example.org")
    session.delete(subscription.reader)
    session.flush()
    newcomer = factories.reader(email="paid+again@example.org")
    with pytest.raises(trials.TrialRefused, match="subscription"):
        trials.start_trial(session, newcomer, now=clock.now(), days=14)


def test_a_deleted_account_leaves_its_trial_behind(session: Session, clock: FixedClock) -> None:
    reader = factories.reader(email="gone@example.org")
    trials.start_trial(session, reader, now=clock.now(), days=14)
    session.delete(reader)
    session.flush()
    again = factories.reader(email="gone@example.org")
    assert "already used" in (trials.refusal_reason(session, again) or "")


def test_days_left_counts_a_started_day(session: Session, clock: FixedClock) -> None:
    trial = trials.start_trial(session, factories.reader(), now=clock.now(), days=14)
    assert trial.days_left(clock.now() + timedelta(days=13, hours=12)) == 1
    assert trial.days_left(clock.now() + timedelta(days=14)) == 0


def _tick(runner: FlaskCliRunner, *args: str) -> str:
    result = runner.invoke(args=["billing", "tick", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_a_reminder_sent_on_the_trials_last_day_says_within_a_day_not_1_days(
    session: Session, runner: FlaskCliRunner, clock: FixedClock, outbox: Outbox
) -> None:
    reader = factories.reader(email="late@example.org")
    trials.start_trial(session, reader, now=clock.now(), days=14)
    session.commit()

    clock.advance(days=13, hours=2)
    assert "1 reminder(s) sent" in _tick(runner)

    assert [m.subject for m in outbox.all("late@example.org")] == [
        "Your free trial ends within a day"
    ]


def test_tick_sends_the_reminder_and_the_ending_once_each(
    session: Session, runner: FlaskCliRunner, clock: FixedClock, outbox: Outbox
) -> None:
    reader = factories.reader(email="ticked@example.org")
    trials.start_trial(session, reader, now=clock.now(), days=14)
    session.commit()

    clock.advance(days=10)
    assert "0 reminder(s)" in _tick(runner)

    clock.advance(days=1, minutes=1)
    assert "1 reminder(s) sent" in _tick(runner)
    assert "0 reminder(s) sent" in _tick(runner)
    assert [m.subject for m in outbox.all("ticked@example.org")] == [
        "Your free trial ends in 3 days"
    ]

    clock.advance(days=3)
    assert "1 trial(s) ended" in _tick(runner)
    assert "0 trial(s) ended" in _tick(runner)
    subjects = [m.subject for m in outbox.all("ticked@example.org")]
    assert subjects == ["Your free trial ends in 3 days", "Your free trial has ended"]
    session.expire_all()
    assert session.scalars(select(Trial)).one().status == TrialStatus.EXPIRED


def test_a_tick_that_runs_late_ends_the_trial_without_a_stale_reminder(
    session: Session, runner: FlaskCliRunner, clock: FixedClock, outbox: Outbox
) -> None:
    trials.start_trial(
        session, factories.reader(email="late@example.org"), now=clock.now(), days=14
    )
    session.commit()
    clock.advance(days=20)
    _tick(runner)
    assert [m.subject for m in outbox.all("late@example.org")] == ["Your free trial has ended"]


def test_tick_accepts_a_time_to_run_as(
    session: Session, runner: FlaskCliRunner, clock: FixedClock
) -> None:
    trials.start_trial(session, factories.reader(), now=clock.now(), days=14)
    session.commit()
    when = (clock.now() + timedelta(days=15)).isoformat()
    assert "1 trial(s) ended" in _tick(runner, "--now", when)


def test_tick_refuses_a_time_that_is_not_iso_8601(runner: FlaskCliRunner) -> None:
    result = runner.invoke(args=["billing", "tick", "--now", "tomorrow"])
    assert result.exit_code == 2
    assert "--now" in result.output


@pytest.mark.postgres_only
def test_two_simultaneous_trial_starts_for_one_person_create_one_trial(
    app: Flask, clock: FixedClock
) -> None:
    if db.engine().dialect.name != "postgresql":
        pytest.fail("run with TEST_DATABASE_URL pointing at PostgreSQL (make test does)")
    session = db.session()
    first = factories.reader(email="same.person@gmail.com")
    second = factories.reader(email="sameperson+other@gmail.com")
    session.commit()
    assert canonical_email(first.email) == canonical_email(second.email)

    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def start(reader_id: int) -> None:
        with app.app_context():
            own = db.new_session()
            try:
                reader = own.get_one(type(first), reader_id)
                barrier.wait(timeout=10)
                trials.start_trial(own, reader, now=clock.now(), days=14)
                own.commit()
                outcomes.append("started")
            except trials.TrialRefused:
                own.rollback()
                outcomes.append("refused")
            finally:
                own.close()

    threads = [threading.Thread(target=start, args=(r.id,)) for r in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes) == ["refused", "started"]
    assert session.scalar(select(func.count()).select_from(Trial)) == 1


def test_seed_demo_creates_plans_staff_and_readers_in_every_trial_state_once(
    runner: FlaskCliRunner, session: Session, clock: FixedClock
) -> None:
    for _ in range(2):
        result = runner.invoke(args=["billing", "seed-demo"])
        assert result.exit_code == 0, result.output
    assert "staff@example.org" in result.output
    states = {t.reader.email: t.status for t in session.scalars(select(Trial)) if t.reader}
    assert states["trial.active@example.org"] == TrialStatus.ACTIVE
    assert states["trial.ending@example.org"] == TrialStatus.ACTIVE
    assert states["trial.soon@example.org"] == TrialStatus.ACTIVE
    demo_trials = {email for email in states if not email.endswith("@demo.example.org")}
    assert len(demo_trials) == 4, "besides the year of demo history"


def test_the_demo_reader_whose_trial_ends_soon_ends_with_a_plain_tick_two_minutes_later(
    runner: FlaskCliRunner, session: Session, clock: FixedClock, outbox: Outbox
) -> None:
    assert runner.invoke(args=["billing", "seed-demo"]).exit_code == 0
    clock.advance(timedelta(minutes=10))
    assert runner.invoke(args=["billing", "tick"]).exit_code == 0
    session.expire_all()
    [soon] = [t for t in session.scalars(select(Trial)) if t.reader and "soon" in t.reader.email]
    assert soon.status == TrialStatus.EXPIRED
    assert [m.subject for m in outbox.all("trial.soon@example.org")] == [
        "Your free trial has ended"
    ]
    others = {t.reader.email: t.status for t in session.scalars(select(Trial)) if t.reader}
    assert others["trial.active@example.org"] == TrialStatus.ACTIVE, "real trials untouched"

    clock.advance(timedelta(minutes=1))
    assert runner.invoke(args=["billing", "seed-demo"]).exit_code == 0
    session.expire_all()
    session.refresh(soon)
    assert (soon.status, soon.ends_at) == (TrialStatus.ACTIVE, clock.now() + timedelta(minutes=2))


def test_create_staff_gives_an_existing_reader_a_role(
    runner: FlaskCliRunner, session: Session
) -> None:
    reader = factories.reader(email="support@example.org")
    result = runner.invoke(
        args=["billing", "create-staff", "--email", "Support@Example.org", "--role", "support"],
        input="\n",
    )
    assert result.exit_code == 0, result.output
    session.refresh(reader)
    assert reader.staff_role == "support"


def test_create_staff_refuses_a_short_password_naming_the_option(runner: FlaskCliRunner) -> None:
    result = runner.invoke(
        args=[
            "billing",
            "create-staff",
            "--email",
            "new@example.org",
            "--role",
            "admin",
            "--password",
            "short",
        ]
    )
    assert result.exit_code == 2
    assert "--password" in result.output
