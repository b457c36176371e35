"""Handle a stored event in one transaction; used by the webhook view and ``replay-events``."""

from __future__ import annotations

import logging
import traceback
from enum import StrEnum
from typing import Any

from flask import current_app
from sqlalchemy import select

from billing import db
from billing.clock import current_clock
from billing.metrics import WEBHOOK_EVENTS
from billing.models import WebhookEvent, WebhookEventStatus
from webhooks import store
from webhooks.registry import EventContext, handler_for

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    """What handling a stored event came to."""

    PROCESSED = "processed"
    IGNORED = "ignored"
    DUPLICATE = "duplicate"
    FAILED = "failed"


def process(event_id: int, gateway: Any) -> Outcome:
    """Handle the stored event ``event_id`` once (see :func:`_process`), and count the outcome."""
    event_type, outcome = _process(event_id, gateway)
    WEBHOOK_EVENTS.labels(type=event_type, outcome=outcome.value).inc()
    return outcome


def _process(event_id: int, gateway: Any) -> tuple[str, Outcome]:
    """Handle the stored event ``event_id`` once: in one transaction, or not at all.

    On success the event is marked processed (or ignored, for types without a handler) in the
    same transaction as the handler's writes. On failure everything is rolled back and the error
    is recorded, so replaying later starts from a clean state. Returns the event's type too.
    """
    now = current_clock().now()
    session = db.new_session()
    event_type = "unknown"
    try:
        if not store.claim(session, event_id):
            session.rollback()
            done_type = session.scalar(select(WebhookEvent.type).where(WebhookEvent.id == event_id))
            return done_type or event_type, Outcome.DUPLICATE
        row = session.get_one(WebhookEvent, event_id)
        event_type = row.type
        registration = handler_for(row.type)
        if registration is None:
            store.mark(session, event_id, WebhookEventStatus.IGNORED, now=now)
            session.commit()
            return event_type, Outcome.IGNORED
        context = EventContext(
            session=session,
            gateway=gateway,
            now=now,
            event_id=row.stripe_event_id,
            event_type=row.type,
            data_object=dict(row.payload.get("data", {}).get("object", {})),
            config=dict(current_app.config),
        )
        registration.handler(context)
        store.mark(session, event_id, WebhookEventStatus.PROCESSED, now=now)
        session.commit()
        return event_type, Outcome.PROCESSED
    except Exception as exc:
        session.rollback()
        log.exception("webhook event %s failed", event_id)
        store.record_failure(session, event_id, _describe(exc), now=now)
        session.commit()
        return event_type, Outcome.FAILED
    finally:
        session.close()


def _describe(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()
