"""The entitlement decision, as a table over subscription states and times, plus its properties.

The decision reads only the reader's loaded relationships, so these tests build transient model
objects and need no database; the clock is an explicit ``now``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.models import (
    BillingInterval,
    ComplimentaryGrant,
    Plan,
    Reader,
    Subscription,
    SubscriptionStatus,
    Trial,
    TrialStatus,
)
from billing.services.entitlements import GRANTING_REASONS, Reason, decide

T0 = datetime(2026, 11, 1, tzinfo=UTC)
PERIOD_END = T0 + timedelta(days=30)
GRACE = timedelta(days=7)
S = SubscriptionStatus


def plan() -> Plan:
    return Plan(
        code="individual-monthly", interval=BillingInterval.MONTH, amount=1200, currency="eur"
    )


def subscription(status: SubscriptionStatus, **overrides: Any) -> Subscription:
    fields: dict[str, Any] = {
        "status": status,
        "current_period_start": T0,
        "current_period_end": PERIOD_END,
        "cancel_at_period_end": False,
        "plan": plan(),
    }
    fields.update(overrides)
    return Subscription(**fields)


def reader(
    *,
    verified: bool = True,
    subscriptions: list[Subscription] | None = None,
    grants: list[ComplimentaryGrant] | None = None,
    trial: Trial | None = None,
) -> Reader:
    return Reader(
        email_verified_at=T0 - timedelta(days=1) if verified else None,
        subscriptions=subscriptions or [],
        grants=grants or [],
        trial=trial,
    )


def trial(
    started: datetime = T0, days: int = 14, status: TrialStatus = TrialStatus.ACTIVE
) -> Trial:
    return Trial(started_at=started, ends_at=started + timedelta(days=days), status=status)


def grant(
    starts: datetime = T0, days: int = 90, revoked: datetime | None = None
) -> ComplimentaryGrant:
    return ComplimentaryGrant(
        starts_at=starts, expires_at=starts + timedelta(days=days), revoked_at=revoked
    )


MID = T0 + timedelta(days=10)

# (case, subscription or None, now, granted, reason, until)
TABLE = [
    ("active", subscription(S.ACTIVE), MID, True, Reason.SUBSCRIPTION, PERIOD_END),
    (
        "active, renewal still processing after the period end",
        subscription(S.ACTIVE),
        PERIOD_END + timedelta(days=1),
        True,
        Reason.SUBSCRIPTION,
        PERIOD_END + GRACE,
    ),
    (
        "active but the mirror is stale beyond the grace",
        subscription(S.ACTIVE),
        PERIOD_END + GRACE,
        False,
        Reason.NONE,
        None,
    ),
    (
        "cancelled at period end, before the end",
        subscription(S.ACTIVE, cancel_at_period_end=True),
        MID,
        True,
        Reason.GRACE_PERIOD,
        PERIOD_END,
    ),
    (
        "cancelled at period end, after the end",
        subscription(S.ACTIVE, cancel_at_period_end=True),
        PERIOD_END,
        False,
        Reason.SUBSCRIPTION_ENDED,
        None,
    ),
    (
        "trialing on Stripe",
        subscription(S.TRIALING, trial_end=T0 + timedelta(days=14)),
        MID,
        True,
        Reason.TRIAL,
        T0 + timedelta(days=14),
    ),
    (
        "trialing on Stripe past the trial end",
        subscription(S.TRIALING, trial_end=T0 + timedelta(days=5)),
        MID,
        False,
        Reason.NONE,
        None,
    ),
    (
        "past due within the grace",
        subscription(S.PAST_DUE, past_due_since=MID - timedelta(days=2)),
        MID,
        True,
        Reason.PAST_DUE_GRACE,
        MID + timedelta(days=5),
    ),
    (
        "past due beyond the grace",
        subscription(S.PAST_DUE, past_due_since=MID - GRACE),
        MID,
        False,
        Reason.PAYMENT_FAILED,
        None,
    ),
    (
        "past due without a recorded start counts from the period start",
        subscription(S.PAST_DUE),
        T0 + timedelta(days=3),
        True,
        Reason.PAST_DUE_GRACE,
        T0 + GRACE,
    ),
    ("unpaid", subscription(S.UNPAID), MID, False, Reason.PAYMENT_FAILED, None),
    (
        "canceled",
        subscription(S.CANCELED, ended_at=MID - timedelta(days=1)),
        MID,
        False,
        Reason.SUBSCRIPTION_ENDED,
        None,
    ),
    ("incomplete", subscription(S.INCOMPLETE), MID, False, Reason.PAYMENT_FAILED, None),
    (
        "incomplete_expired",
        subscription(S.INCOMPLETE_EXPIRED),
        MID,
        False,
        Reason.SUBSCRIPTION_ENDED,
        None,
    ),
    ("paused", subscription(S.PAUSED), MID, False, Reason.NONE, None),
    (
        "active with an end time already passed",
        subscription(S.ACTIVE, ended_at=MID - timedelta(hours=1)),
        MID,
        False,
        Reason.SUBSCRIPTION_ENDED,
        None,
    ),
]


@pytest.mark.parametrize(
    ("sub", "now", "granted", "reason", "until"),
    [row[1:] for row in TABLE],
    ids=[row[0] for row in TABLE],
)
def test_subscription_states_decide_access(
    sub: Subscription, now: datetime, granted: bool, reason: Reason, until: datetime | None
) -> None:
    decision = decide(reader(subscriptions=[sub]), now, past_due_grace=GRACE)
    assert (decision.granted, decision.reason, decision.until) == (granted, reason, until)
    if granted:
        assert decision.plan == "individual-monthly"


def test_every_stripe_status_appears_in_the_table() -> None:
    assert {row[1].status for row in TABLE} == set(SubscriptionStatus)


def test_no_reader_is_refused_with_reason_none() -> None:
    assert decide(None, MID) == decide(None, MID).refused(Reason.NONE)


def test_an_unverified_reader_is_refused_even_with_a_running_trial() -> None:
    decision = decide(reader(verified=False, trial=trial()), MID)
    assert (decision.granted, decision.reason) == (False, Reason.EMAIL_UNVERIFIED)


def test_a_running_trial_grants_access_until_it_ends() -> None:
    decision = decide(reader(trial=trial()), MID)
    assert (decision.granted, decision.reason, decision.until) == (
        True,
        Reason.TRIAL,
        T0 + timedelta(days=14),
    )


def test_a_trial_stops_at_its_last_instant() -> None:
    ends = T0 + timedelta(days=14)
    assert decide(reader(trial=trial()), ends - timedelta(microseconds=1)).granted
    assert decide(reader(trial=trial()), ends).reason == Reason.TRIAL_EXPIRED


def test_an_expired_trial_is_refused_as_trial_expired() -> None:
    decision = decide(reader(trial=trial(status=TrialStatus.EXPIRED)), MID)
    assert (decision.granted, decision.reason) == (False, Reason.TRIAL_EXPIRED)


def test_an_active_complimentary_grant_gives_access_until_it_expires() -> None:
    decision = decide(reader(grants=[grant()]), MID)
    assert (decision.granted, decision.reason, decision.until) == (
        True,
        Reason.COMPLIMENTARY,
        T0 + timedelta(days=90),
    )


def test_an_expired_or_revoked_grant_gives_nothing() -> None:
    assert decide(reader(grants=[grant(days=5)]), MID).reason == Reason.NONE
    assert decide(reader(grants=[grant(revoked=T0 + timedelta(days=1))]), MID).reason == Reason.NONE


def test_a_grant_that_has_not_started_gives_nothing_yet() -> None:
    assert not decide(reader(grants=[grant(starts=MID + timedelta(days=1))]), MID).granted


def test_a_paid_subscription_wins_over_a_grant_and_a_trial() -> None:
    decision = decide(
        reader(subscriptions=[subscription(S.ACTIVE)], grants=[grant()], trial=trial()), MID
    )
    assert decision.reason == Reason.SUBSCRIPTION


def test_a_grant_wins_over_a_trial() -> None:
    assert decide(reader(grants=[grant()], trial=trial()), MID).reason == Reason.COMPLIMENTARY


def test_a_failing_payment_explains_the_refusal_better_than_an_expired_trial() -> None:
    sub = subscription(S.UNPAID)
    decision = decide(reader(subscriptions=[sub], trial=trial(status=TrialStatus.EXPIRED)), MID)
    assert decision.reason == Reason.PAYMENT_FAILED


def test_an_active_subscription_wins_over_an_old_ended_one() -> None:
    old = subscription(S.CANCELED, ended_at=T0)
    decision = decide(reader(subscriptions=[old, subscription(S.ACTIVE)]), MID)
    assert decision.reason == Reason.SUBSCRIPTION


# Properties ---------------------------------------------------------------------------------

moments = st.integers(min_value=-60 * 24 * 40, max_value=60 * 24 * 80).map(
    lambda minutes: T0 + timedelta(minutes=minutes)
)


@st.composite
def subscriptions(draw: st.DrawFn) -> Subscription:
    start = draw(moments)
    end = start + timedelta(days=draw(st.sampled_from([30, 365])))
    return subscription(
        draw(st.sampled_from(list(SubscriptionStatus))),
        current_period_start=start,
        current_period_end=end,
        cancel_at_period_end=draw(st.booleans()),
        trial_end=draw(st.none() | moments),
        past_due_since=draw(st.none() | moments),
        ended_at=draw(st.none() | moments),
    )


@st.composite
def readers(draw: st.DrawFn) -> Reader:
    trial_status = draw(st.sampled_from(list(TrialStatus)))
    return reader(
        verified=draw(st.booleans()),
        subscriptions=draw(st.lists(subscriptions(), max_size=3)),
        grants=[
            grant(starts=draw(moments), days=draw(st.integers(1, 400)))
            for _ in range(draw(st.integers(0, 2)))
        ],
        trial=draw(st.none() | st.just(trial(started=draw(moments), status=trial_status))),
    )


@given(readers(), moments)
def test_a_granted_decision_always_lasts_beyond_now(who: Reader, now: datetime) -> None:
    decision = decide(who, now, past_due_grace=GRACE)
    assert decision.granted == (decision.reason in GRANTING_REASONS)
    if decision.granted:
        assert decision.until is not None and decision.until > now
    else:
        assert decision.until is None


@given(readers(), moments)
def test_an_unverified_reader_is_never_granted(who: Reader, now: datetime) -> None:
    who.email_verified_at = None
    assert decide(who, now).reason == Reason.EMAIL_UNVERIFIED


@given(readers(), moments)
def test_adding_a_running_grant_never_takes_access_away(who: Reader, now: datetime) -> None:
    before = decide(who, now, past_due_grace=GRACE)
    who.grants = [*who.grants, grant(starts=now - timedelta(days=1), days=30)]
    after = decide(who, now, past_due_grace=GRACE)
    assert after.granted or not who.is_verified
    if before.granted:
        assert after.granted
