"""The table of Stripe event types we handle: ``@handles("type", why="...")`` registers a handler.

Handlers treat an event as a trigger: they re-fetch the object from Stripe and upsert our mirror
under a row lock, so delivery order and repetition do not matter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session


@dataclass(frozen=True)
class EventContext:
    """What a handler gets: the transaction, the gateway, the time, the event and the settings."""

    session: Session
    gateway: Any
    now: datetime
    event_id: str
    event_type: str
    data_object: dict[str, Any]
    config: dict[str, Any]


Handler = Callable[[EventContext], None]


@dataclass(frozen=True)
class Registration:
    """A handler and the one-line reason we listen to its event type."""

    handler: Handler
    why: str


HANDLERS: dict[str, Registration] = {}


def handles(*event_types: str, why: str) -> Callable[[Handler], Handler]:
    """Register the decorated function for ``event_types``; ``why`` says what we need it for."""

    def decorator(handler: Handler) -> Handler:
        for event_type in event_types:
            if event_type in HANDLERS:
                raise ValueError(f"{event_type} already has a handler")
            HANDLERS[event_type] = Registration(handler, why)
        return handler

    return decorator


def handler_for(event_type: str) -> Registration | None:
    """The registration for ``event_type``, or ``None`` for types we do not listen to."""
    from webhooks import handlers  # noqa: F401 - importing fills the table

    return HANDLERS.get(event_type)
