"""A demo reader whose free trial ends two minutes after ``seed-demo``, to watch a trial end
without ``tick --now`` (which ends every real trial up to that moment, for good)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.models import Reader, ScheduledSubscription, Subscription, Trial, TrialStatus

TRIAL_SOON_EMAIL = "trial.soon@example.org"
TRIAL_SOON_AFTER = timedelta(minutes=2)


def seed_trial_ending_soon(
    session: Session,
    ensure_reader: Callable[..., tuple[Reader, bool]],
    *,
    now: datetime,
    days: int,
) -> Reader:
    """Ensure :data:`TRIAL_SOON_EMAIL` has a running trial that ends :data:`TRIAL_SOON_AFTER`
    from ``now`` (set again on every run, unless that reader has subscribed meanwhile)."""
    reader, _ = ensure_reader(TRIAL_SOON_EMAIL, "Trial Ends Soon", now=now)
    session.flush()
    subscribed = session.scalar(
        select(Subscription.id).where(Subscription.reader_id == reader.id)
    ) or session.scalar(
        select(ScheduledSubscription.id).where(ScheduledSubscription.reader_id == reader.id)
    )
    if subscribed:
        return reader
    ends_at = now + TRIAL_SOON_AFTER
    trial = session.scalar(select(Trial).where(Trial.reader_id == reader.id))
    if trial is None:
        trial = Trial(reader_id=reader.id, email_canonical=reader.email_canonical)
        session.add(trial)
    trial.status = TrialStatus.ACTIVE
    trial.started_at = ends_at - timedelta(days=days)
    trial.ends_at = ends_at
    trial.converted_at = trial.reminder_sent_at = trial.ended_mail_sent_at = None
    session.flush()
    return reader
