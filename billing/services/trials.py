"""The reader's card-less free trial: who may start one, and the reminder and ending mails.

Rules:
- A trial needs a verified e-mail address.
- One trial per person, ever: refused when the reader's canonical address (see
  :func:`billing.services.accounts.canonical_email`) already had a trial or a subscription, also
  from an account since deleted. The database enforces it with a unique canonical address on
  trials, so two simultaneous starts create one trial.
- The trial lasts ``TRIAL_DAYS`` days from the moment it starts.
- A reminder goes out ``TRIAL_REMINDER_DAYS`` before the end and an ending mail at the end, each
  exactly once, from :func:`due_reminders` / :func:`due_endings` driven by ``flask billing tick``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import Update, exists, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from billing.errors import Conflict, Forbidden
from billing.models import Customer, Reader, Subscription, Trial, TrialStatus
from billing.services.privacy import erased_email_hash


class TrialRefused(Conflict):
    """This person cannot start a trial (already had one, or a subscription)."""

    code = "trial_refused"


class EmailNotVerified(Forbidden):
    """The reader must verify their e-mail address first."""

    code = "email_unverified"


def refusal_reason(session: Session, reader: Reader) -> str | None:
    """Why ``reader`` may not start a trial, in words for them; ``None`` when they may."""
    if not reader.is_verified:
        return "Please verify your e-mail address first: we sent you a link."
    if reader.trial is not None:
        return "You have already used your free trial."
    canonical = reader.email_canonical
    # An erased account leaves its address behind only as a hash (billing.services.privacy).
    known = [canonical, erased_email_hash(canonical)]
    had_trial = session.scalar(select(exists().where(Trial.email_canonical.in_(known))))
    if had_trial:
        return "A free trial was already used with this e-mail address."
    had_subscription = session.scalar(
        select(
            exists()
            .where(Subscription.customer_id == Customer.id)
            .where(Customer.email_canonical.in_(known))
        )
    ) or bool(reader.subscriptions)
    if had_subscription:
        return "This e-mail address already had a subscription, so a free trial is not available."
    return None


def start_trial(session: Session, reader: Reader, *, now: datetime, days: int) -> Trial:
    """Start the reader's free trial of ``days`` days; raise if they may not have one."""
    reason = refusal_reason(session, reader)
    if reason is not None:
        error = EmailNotVerified if not reader.is_verified else TrialRefused
        raise error(reason)
    trial = Trial(
        reader_id=reader.id,
        email_canonical=reader.email_canonical,
        status=TrialStatus.ACTIVE,
        started_at=now,
        ends_at=now + timedelta(days=days),
    )
    try:
        with session.begin_nested():
            session.add(trial)
            session.flush()
    except IntegrityError as exc:
        raise TrialRefused("A free trial was already used with this e-mail address.") from exc
    return trial


def due_reminders(session: Session, *, now: datetime, lead: timedelta) -> list[int]:
    """Ids of running trials that end within ``lead`` and have not been reminded yet."""
    return list(
        session.scalars(
            select(Trial.id).where(
                Trial.status == TrialStatus.ACTIVE,
                Trial.reminder_sent_at.is_(None),
                Trial.ends_at > now,
                Trial.ends_at <= now + lead,
            )
        )
    )


def due_endings(session: Session, *, now: datetime) -> list[int]:
    """Ids of trials whose time is over but which are still marked active."""
    return list(
        session.scalars(
            select(Trial.id).where(Trial.status == TrialStatus.ACTIVE, Trial.ends_at <= now)
        )
    )


def send_reminder(
    session: Session, trial_id: int, *, now: datetime, notify: Callable[[Trial], None]
) -> bool:
    """Claim and send one reminder; ``False`` when another run already claimed it."""
    claim = update(Trial).where(Trial.id == trial_id, Trial.reminder_sent_at.is_(None))
    return _claim_and_notify(session, trial_id, claim.values(reminder_sent_at=now), notify)


def end_trial(
    session: Session, trial_id: int, *, now: datetime, notify: Callable[[Trial], None]
) -> bool:
    """Mark an ended trial expired and send the ending mail once; ``False`` if already done."""
    claim = update(Trial).where(Trial.id == trial_id, Trial.status == TrialStatus.ACTIVE)
    values = claim.values(ended_mail_sent_at=now, status=TrialStatus.EXPIRED)
    return _claim_and_notify(session, trial_id, values, notify)


def mark_converted(session: Session, trial_id: int, *, now: datetime) -> bool:
    """Mark a trial whose reader subscribed as converted, without a mail; ``False`` if done."""
    claim = update(Trial).where(Trial.id == trial_id, Trial.status == TrialStatus.ACTIVE)
    done = session.execute(claim.values(status=TrialStatus.CONVERTED, converted_at=now))
    return bool(done.rowcount == 1)  # type: ignore[attr-defined]


def _claim_and_notify(
    session: Session, trial_id: int, claim: Update, notify: Callable[[Trial], None]
) -> bool:
    """Run the conditional ``claim``; if it took the trial, tell its reader.

    A conditional update cannot succeed twice, so concurrent ticks never both send a mail. The
    caller commits after each trial, so a mail that fails is retried by the next tick.
    """
    if session.execute(claim).rowcount != 1:  # type: ignore[attr-defined]
        return False
    trial = session.get_one(Trial, trial_id)
    session.refresh(trial)
    if trial.reader is not None:
        notify(trial)
    return True
