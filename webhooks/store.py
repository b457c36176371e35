"""The event log: every verified Stripe event is stored first, under its unique Stripe id.

The log is the worker's queue too (no second record of what has been handled): a row is
``received`` until a worker claims it (see :mod:`billing.leases`), then ``processed`` or
``ignored``; ``failed`` with a ``next_attempt_at`` while it is retried with backoff; ``dead`` when
out of attempts or when its payload can never be handled. The unique id makes a redelivery (or a
concurrent duplicate on another node) a no-op.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, Table, and_, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from billing import leases
from billing.models import WebhookEvent, WebhookEventStatus

DONE = (WebhookEventStatus.PROCESSED, WebhookEventStatus.IGNORED)
READY = (WebhookEventStatus.RECEIVED, WebhookEventStatus.FAILED)
"""What a worker picks up by itself (when due)."""
NOT_DONE = (*READY, WebhookEventStatus.DEAD)
"""What ``replay-events`` may take up by hand."""


def store(
    executor: Session | Connection,
    event: dict[str, Any],
    *,
    now: datetime,
    dead_because: str | None = None,
) -> tuple[int, bool]:
    """Insert ``event`` unless its id is already stored: the row's id, and whether it is new.

    One ``INSERT ... ON CONFLICT DO NOTHING``: a redelivery, or a concurrent duplicate on another
    node, inserts nothing and waits for nobody but the other insert of the same id.
    ``dead_because`` stores it dead at once with that error (a payload no handler can use).
    """
    values = {
        "stripe_event_id": event["id"],
        "type": event["type"],
        "livemode": bool(event.get("livemode", False)),
        "stripe_created_at": datetime.fromtimestamp(event["created"], UTC),
        "received_at": now,
        "payload": event,
        "status": WebhookEventStatus.RECEIVED if dead_because is None else WebhookEventStatus.DEAD,
        "attempts": 0,
        "last_error": None if dead_because is None else f"unhandleable: {dead_because}",
    }
    bind = executor.get_bind() if isinstance(executor, Session) else executor
    new_id = executor.execute(_insert_statement(bind.dialect.name), values).scalar()
    if new_id is not None:
        return int(new_id), True
    existing = executor.scalar(
        select(WebhookEvent.id).where(WebhookEvent.stripe_event_id == event["id"])
    )
    assert existing is not None
    return int(existing), False


_INSERTS: dict[str, Any] = {}


def _insert_statement(dialect: str) -> Any:
    """The dialect's ``INSERT ... ON CONFLICT DO NOTHING RETURNING id``, built once: the values
    are bound at execution, so the compiled statement is reused for every delivery."""
    statement = _INSERTS.get(dialect)
    if statement is None:
        table = cast(Table, WebhookEvent.__table__)
        insert = pg_insert if dialect == "postgresql" else sqlite_insert
        statement = (
            insert(table)
            .on_conflict_do_nothing(index_elements=[table.c.stripe_event_id])
            .returning(table.c.id)
        )
        _INSERTS[dialect] = statement
    return statement


def by_stripe_id(session: Session, stripe_event_id: str) -> WebhookEvent | None:
    """The stored event with this Stripe id, if any."""
    return session.scalar(
        select(WebhookEvent).where(WebhookEvent.stripe_event_id == stripe_event_id)
    )


def claim_due(
    session: Session, *, now: datetime, worker: str, lease: timedelta, limit: int
) -> list[int]:
    """Claim up to ``limit`` due events for ``worker`` (the caller commits); their row ids."""
    return leases.claim_due(
        session, WebhookEvent, READY, now=now, worker=worker, lease=lease, limit=limit
    )


def claim_for_replay(
    session: Session, event_id: int, *, now: datetime, worker: str, lease: timedelta
) -> bool:
    """Claim one not-done event now, whatever its schedule, unless a live worker holds it."""
    return leases.claim_one(
        session, WebhookEvent, event_id, NOT_DONE, now=now, worker=worker, lease=lease
    )


def hold(session: Session, event_id: int, worker: str) -> WebhookEvent | None:
    """Lock and load the claimed event for its handling transaction (``None``: no longer ours)."""
    return cast(WebhookEvent | None, leases.hold(session, WebhookEvent, event_id, worker, DONE))


def mark(
    session: Session,
    event_id: int,
    status: WebhookEventStatus,
    *,
    worker: str,
    now: datetime,
    error: str | None = None,
    retry_at: datetime | None = None,
) -> bool:
    """Record the outcome of ``worker``'s attempt and end its claim (unless it lost it)."""
    values: dict[str, Any] = {
        "status": status,
        "last_error": None if error is None else error[:4000],
        "next_attempt_at": retry_at,
    }
    if status in DONE:
        values["processed_at"] = now
    return leases.release(session, WebhookEvent, event_id, worker, DONE, **values)


def stuck(now: datetime, lease: timedelta) -> Any:
    """The condition of events no worker is getting on with: a claim whose lease ran out, or
    received longer than a lease ago and never claimed (no worker running)."""
    return and_(
        WebhookEvent.status.in_(READY),
        or_(
            WebhookEvent.locked_until <= now,
            and_(
                WebhookEvent.locked_until.is_(None),
                WebhookEvent.status == WebhookEventStatus.RECEIVED,
                WebhookEvent.received_at <= now - lease,
            ),
        ),
    )
