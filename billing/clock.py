"""Where the application reads the time.

Every piece of code that needs "now" takes a :class:`Clock`, so tests can drive time with
:class:`FixedClock` instead of sleeping, and the CLI can run ``tick`` as of another moment.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Something that tells the current time as a timezone-aware UTC datetime."""

    def now(self) -> datetime:
        """Return the current moment, aware, in UTC."""
        ...


class SystemClock:
    """The real wall clock."""

    def now(self) -> datetime:
        """Return the current wall-clock time in UTC."""
        return datetime.now(UTC)


class FixedClock:
    """A clock that only moves when told to: for tests and for ``tick --now``."""

    def __init__(self, at: datetime) -> None:
        self._at = as_utc(at)

    def now(self) -> datetime:
        """Return the moment the clock is set to."""
        return self._at

    def set(self, at: datetime) -> None:
        """Jump to ``at``."""
        self._at = as_utc(at)

    def advance(self, delta: timedelta | None = None, **kwargs: float) -> datetime:
        """Move forward by ``delta`` (or ``timedelta(**kwargs)``) and return the new time."""
        self._at += delta if delta is not None else timedelta(**kwargs)
        return self._at


def as_utc(value: datetime) -> datetime:
    """Return ``value`` as an aware UTC datetime; naive values are taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def current_clock() -> Clock:
    """The clock of the running Flask app (views and CLI pass it on to services)."""
    from flask import current_app

    return current_app.extensions["clock"]  # type: ignore[no-any-return]
