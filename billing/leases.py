"""Leases on queue rows: how workers share the webhook event log and the mail outbox.

Both tables carry ``status``, ``attempts``, ``next_attempt_at``, ``locked_until`` and
``locked_by``. A worker handles a row in two transactions:

1. :func:`claim_due` takes a batch of due rows and commits at once: each gets the worker's name,
   a lease (``locked_until``) and one more attempt. On PostgreSQL the rows are picked with
   ``FOR UPDATE SKIP LOCKED``, so concurrent workers take disjoint batches without waiting; on
   SQLite the database's single writer has the same effect. Counting the attempt here, in its own
   commit, means even a worker killed by the row (out of memory, SIGKILL) uses an attempt up.
2. :func:`hold` starts the handling transaction by locking (and loading) the row again, only if
   the worker still holds it. A row whose worker died is claimable again once its lease has
   expired; while a live worker handles it, the row lock of :func:`hold` keeps every other worker
   off it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how soon a failed row is tried again, and how long a claim lasts."""

    max_attempts: int = 12
    base: timedelta = timedelta(seconds=10)
    cap: timedelta = timedelta(hours=1)
    lease: timedelta = timedelta(minutes=2)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> RetryPolicy:
        """The policy of the ``WORKER_*`` settings."""
        return cls(
            max_attempts=int(config["WORKER_MAX_ATTEMPTS"]),
            base=timedelta(seconds=float(config["WORKER_RETRY_BASE"])),
            cap=timedelta(seconds=float(config["WORKER_RETRY_CAP"])),
            lease=timedelta(seconds=float(config["WORKER_LEASE"])),
        )

    def retry_at(self, attempts: int, now: datetime) -> datetime | None:
        """When to try again after ``attempts`` failed attempts; ``None``: no more (dead)."""
        if attempts >= self.max_attempts:
            return None
        doublings = min(max(attempts - 1, 0), 30)  # the cap is reached long before
        return now + min(self.cap, self.base * (1 << doublings))


def _free(model: Any, now: datetime) -> Any:
    return or_(model.locked_until.is_(None), model.locked_until <= now)


def claim_due(
    session: Session,
    model: Any,
    ready: Sequence[Any],
    *,
    now: datetime,
    worker: str,
    lease: timedelta,
    limit: int,
) -> list[int]:
    """Claim up to ``limit`` rows in a ``ready`` status that are due and not leased; their ids.

    The caller commits, so the claim is visible to every other worker before handling starts.
    """
    due = (
        select(model.id)
        .where(
            model.status.in_(ready),
            or_(model.next_attempt_at.is_(None), model.next_attempt_at <= now),
            _free(model, now),
        )
        .order_by(model.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return _take(session, model, model.id.in_(due.scalar_subquery()), now, worker, lease)


def claim_one(
    session: Session,
    model: Any,
    row_id: int,
    claimable: Sequence[Any],
    *,
    now: datetime,
    worker: str,
    lease: timedelta,
) -> bool:
    """Claim one row in a ``claimable`` status whatever its schedule (a replay by hand), unless a
    live worker holds it; whether it was claimed. The caller commits."""
    condition = (model.id == row_id) & model.status.in_(claimable)
    return bool(_take(session, model, condition, now, worker, lease))


def _take(
    session: Session, model: Any, condition: Any, now: datetime, worker: str, lease: timedelta
) -> list[int]:
    statement = (
        update(model)
        .where(condition, _free(model, now))
        .values(locked_by=worker, locked_until=now + lease, attempts=model.attempts + 1)
        .returning(model.id)
        .execution_options(synchronize_session=False)
    )
    return sorted(session.scalars(statement).all())


def hold(session: Session, model: Any, row_id: int, worker: str, done: Sequence[Any]) -> Any:
    """Lock the row for this transaction if ``worker`` still holds its claim and it is not in a
    ``done`` status, and load it in the same statement (``UPDATE ... RETURNING``): the row, or
    ``None`` when another worker took it over or finished it."""
    return session.scalars(
        update(model)
        .where(model.id == row_id, model.locked_by == worker, model.status.not_in(done))
        .values(locked_by=worker)
        .returning(model)
        .execution_options(synchronize_session=False, populate_existing=True)
    ).one_or_none()


def release(
    session: Session,
    model: Any,
    row_id: int,
    worker: str,
    done: Sequence[Any],
    **values: Any,
) -> bool:
    """Set ``values`` on the row and end ``worker``'s claim, unless it lost the claim meanwhile."""
    result = session.execute(
        update(model)
        .where(model.id == row_id, model.locked_by == worker, model.status.not_in(done))
        .values(locked_by=None, locked_until=None, **values)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def attempts_of(session: Session, model: Any, row_id: int) -> int:
    """How many attempts the row has had (claims included)."""
    return int(session.scalar(select(model.attempts).where(model.id == row_id)) or 0)
