"""What a verified webhook body must be before it is stored: a Stripe event envelope.

A body that fails here is refused with a 400 and stored nowhere (even correctly signed, it cannot
be a Stripe event). An envelope that passes but whose ``data.object`` a handler cannot use is
stored and marked dead at once (:func:`unhandleable_reason`): answering 2xx stops Stripe from
retrying something that can never succeed, and the dead row stays visible and replayable.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any

MAX_DEPTH = 32
"""Stripe's events nest about eight levels deep; anything far deeper is not one."""
EARLIEST = datetime(2011, 1, 1, tzinfo=UTC)
"""No Stripe event was created before Stripe's public launch."""
LATEST_AHEAD = timedelta(days=1)
"""How far in the future an event's ``created`` may be (clock skew), and no more."""
EVENT_ID = re.compile(r"evt_[A-Za-z0-9_]{1,251}")
EVENT_TYPE = re.compile(r"[a-z][a-z0-9_.]{0,127}")


class InvalidEnvelope(ValueError):
    """The body is not a Stripe event; the message says why (safe to show the sender)."""


def parse(payload: bytes, *, now: datetime) -> dict[str, Any]:
    """The event in ``payload``, checked; raise :class:`InvalidEnvelope` when it is none."""
    try:
        text = payload.decode("utf-8")
        event = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except UnicodeDecodeError as exc:
        raise InvalidEnvelope("The body is not UTF-8.") from exc
    except RecursionError as exc:
        raise InvalidEnvelope("The body is nested too deeply to be a Stripe event.") from exc
    except ValueError as exc:
        raise InvalidEnvelope(f"The body is not JSON: {exc}") from exc
    if not isinstance(event, dict):
        raise InvalidEnvelope("The body is not a JSON object.")
    if _depth(event) > MAX_DEPTH:
        raise InvalidEnvelope("The body is nested too deeply to be a Stripe event.")
    _require_text(event, "id", EVENT_ID, "an event id (evt_...)")
    _require_text(event, "type", EVENT_TYPE, "an event type")
    created = event.get("created")
    if not isinstance(created, int) or isinstance(created, bool):
        raise InvalidEnvelope("created must be a Unix timestamp in whole seconds.")
    if not EARLIEST.timestamp() <= created <= (now + LATEST_AHEAD).timestamp():
        raise InvalidEnvelope("created is not a time a Stripe event can have.")
    if not isinstance(event.get("livemode", False), bool):
        raise InvalidEnvelope("livemode must be true or false.")
    if not isinstance(event.get("data", {}), dict):
        raise InvalidEnvelope("data must be an object.")
    if _has_lone_surrogate(event):
        raise InvalidEnvelope("The body contains a lone surrogate, which is not text.")
    return event


def unhandleable_reason(event: dict[str, Any]) -> str | None:
    """Why a handler can never use this event's object (``None`` when it can): handlers take the
    object's id from ``data.object`` and re-fetch it."""
    data = event.get("data", {})
    if "object" not in data:
        return "data.object is missing"
    stripe_object = data["object"]
    if not isinstance(stripe_object, dict):
        return "data.object is not an object"
    object_id = stripe_object.get("id")
    if not isinstance(object_id, str) or not object_id.strip():
        return "data.object has no id"
    if "\x00" in object_id or len(object_id) > 255:
        return "data.object.id is not a Stripe id"
    return None


def _require_text(event: dict[str, Any], key: str, pattern: re.Pattern[str], what: str) -> None:
    value = event.get(key)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise InvalidEnvelope(f"{key} must be {what}.")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is too large a number")
    return value


def _depth(value: Any) -> int:
    """How deeply ``value`` nests objects and lists (a scalar is 0), without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if level <= MAX_DEPTH:
                stack.extend((child, level + 1) for child in children)
    return deepest


def _has_lone_surrogate(value: Any) -> bool:
    """Whether any key or string in ``value`` holds a lone surrogate (which no database stores)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False
