"""Handle a claimed event in one transaction; used by the worker and ``replay-events``.

Handlers may raise :class:`Unhandleable` for a payload that can never succeed: the event is
then dead at once instead of being retried until it runs out of attempts.
"""

from __future__ import annotations

import logging
import traceback
from datetime import datetime
from enum import StrEnum
from typing import Any

from flask import current_app
from sqlalchemy.orm import Session

from billing import db, leases
from billing.clock import current_clock
from billing.leases import RetryPolicy
from billing.metrics import WEBHOOK_EVENTS
from billing.models import WebhookEvent, WebhookEventStatus
from webhooks import store
from webhooks.envelope import unhandleable_reason
from webhooks.registry import EventContext, handler_for

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    """What an attempt at a stored event came to."""

    PROCESSED = "processed"
    IGNORED = "ignored"
    DUPLICATE = "duplicate"
    """Someone else handled it first (or took it over): this attempt did nothing."""
    FAILED = "failed"
    """It failed and will be retried at its ``next_attempt_at``."""
    DEAD = "dead"
    """It failed for good: out of attempts, or a payload that can never be handled."""


class Unhandleable(Exception):
    """Raised by a handler when the event's payload can never be handled (no retry helps)."""


def process(event_id: int, gateway: Any, *, worker: str, policy: RetryPolicy) -> Outcome:
    """Handle the event ``event_id`` that ``worker`` has claimed, and count the outcome.

    On success the event is marked processed (or ignored, for types without a handler) in the
    same transaction as the handler's writes. On failure everything is rolled back and the
    error is recorded with the time of the next attempt, or the event is dead: when it has had
    ``policy.max_attempts`` attempts, or its payload can never be handled.
    """
    event_type, outcome = _process(event_id, gateway, worker, policy)
    WEBHOOK_EVENTS.labels(type=event_type, outcome=outcome.value).inc()
    return outcome


def _process(event_id: int, gateway: Any, worker: str, policy: RetryPolicy) -> tuple[str, Outcome]:
    now = current_clock().now()
    session = db.new_session()
    event_type = "unknown"
    try:
        row = store.hold(session, event_id, worker)
        if row is None:
            session.rollback()
            return event_type, Outcome.DUPLICATE
        event_type = row.type
        registration = handler_for(row.type)
        if registration is None:
            store.mark(session, event_id, WebhookEventStatus.IGNORED, worker=worker, now=now)
            session.commit()
            return event_type, Outcome.IGNORED
        reason = unhandleable_reason(row.payload)
        if reason is not None:
            raise Unhandleable(reason)
        context = EventContext(
            session=session,
            gateway=gateway,
            now=now,
            event_id=row.stripe_event_id,
            event_type=row.type,
            data_object=dict(row.payload["data"]["object"]),
            config=dict(current_app.config),
        )
        registration.handler(context)
        store.mark(session, event_id, WebhookEventStatus.PROCESSED, worker=worker, now=now)
        session.commit()
        return event_type, Outcome.PROCESSED
    except Exception as exc:
        session.rollback()
        log.exception("webhook event %s failed", event_id)
        return event_type, _record_failure(session, event_id, exc, worker, policy, now)
    finally:
        session.close()


def _record_failure(
    session: Session,
    event_id: int,
    exc: Exception,
    worker: str,
    policy: RetryPolicy,
    now: datetime,
) -> Outcome:
    """In a fresh transaction after the rollback: keep the error, schedule the retry or give up.

    Left alone when the claim was lost meanwhile (a takeover after the lease ran out): marking an
    event another worker handled as failed would have it applied a second time.
    """
    error = _describe(exc)
    if isinstance(exc, Unhandleable):
        retry_at = None
        error = f"unhandleable: {exc}"
    else:
        retry_at = policy.retry_at(leases.attempts_of(session, WebhookEvent, event_id), now)
    status = WebhookEventStatus.FAILED if retry_at else WebhookEventStatus.DEAD
    recorded = store.mark(
        session, event_id, status, worker=worker, now=now, error=error, retry_at=retry_at
    )
    session.commit()
    if not recorded:
        return Outcome.DUPLICATE
    return Outcome.FAILED if retry_at else Outcome.DEAD


def _describe(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()
