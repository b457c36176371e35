"""The event log: every verified Stripe event is stored first, under its unique Stripe id.

Storing and handling are separate transactions: an event is never lost because its handler
failed, and the unique id makes a redelivery (or a concurrent duplicate on another node) a no-op.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from billing.models import WebhookEvent, WebhookEventStatus

DONE = (WebhookEventStatus.PROCESSED, WebhookEventStatus.IGNORED)


def store(session: Session, event: dict[str, Any], *, now: datetime) -> WebhookEvent:
    """Insert ``event`` unless its id is already stored; return the stored row either way."""
    existing = by_stripe_id(session, event["id"])
    if existing is not None:
        return existing
    row = WebhookEvent(
        stripe_event_id=event["id"],
        type=str(event.get("type", "")),
        livemode=bool(event.get("livemode", False)),
        stripe_created_at=datetime.fromtimestamp(int(event.get("created") or now.timestamp()), UTC),
        received_at=now,
        payload=event,
        status=WebhookEventStatus.RECEIVED,
    )
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        # Another delivery of the same event stored it between our look-up and insert.
        stored = by_stripe_id(session, event["id"])
        assert stored is not None
        return stored
    return row


def by_stripe_id(session: Session, stripe_event_id: str) -> WebhookEvent | None:
    """The stored event with this Stripe id, if any."""
    return session.scalar(
        select(WebhookEvent).where(WebhookEvent.stripe_event_id == stripe_event_id)
    )


def claim(session: Session, event_id: int) -> bool:
    """Lock the event for handling in this transaction; ``False`` if it was already handled.

    A conditional UPDATE takes the row (or, on SQLite, the database) write lock at once, so a
    concurrent duplicate waits here and then finds the event done.
    """
    result = session.execute(
        update(WebhookEvent)
        .where(WebhookEvent.id == event_id, WebhookEvent.status.not_in(DONE))
        .values(attempts=WebhookEvent.attempts + 1)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def mark(
    session: Session,
    event_id: int,
    status: WebhookEventStatus,
    *,
    now: datetime,
    error: str | None = None,
) -> None:
    """Record the outcome of handling the event."""
    values: dict[str, Any] = {"status": status, "last_error": error}
    if status in DONE:
        values["processed_at"] = now
    session.execute(update(WebhookEvent).where(WebhookEvent.id == event_id).values(**values))


def record_failure(session: Session, event_id: int, error: str, *, now: datetime) -> None:
    """In a fresh transaction after a rollback: count the attempt and keep the error.

    Left alone when a concurrent delivery handled the event after our rollback released it:
    marking a handled event failed would have ``replay-events`` apply it a second time.
    """
    session.execute(
        update(WebhookEvent)
        .where(WebhookEvent.id == event_id, WebhookEvent.status.not_in(DONE))
        .values(
            status=WebhookEventStatus.FAILED,
            last_error=error[:4000],
            attempts=WebhookEvent.attempts + 1,
        )
    )
