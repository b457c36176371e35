"""Counting anonymous IP sessions off the hot path: in memory per process, written in batches.

The content site asks about anonymous visitors on every article view, so a visit granted through
a group's office network costs the request one set insertion under a lock (:meth:`record`), no
I/O. Each process writes what it gathered (:meth:`IpSessionCounter.flush`) in a transaction of
its own:

- after the response that found a flush due has been sent (``call_on_close``), so no reader
  waits for it: due every ``GROUP_IP_SESSIONS_FLUSH_INTERVAL`` seconds (60) or as soon as
  :data:`FLUSH_AT` visits are waiting; any response finds it due, not only a visit's, so the
  last visits before a quiet spell are written within the interval and the next request;
- when the process exits (``atexit``), for what is left.

Several processes count the same visitor once: the database decides (see
:mod:`billing.services.ip_sessions`). What a process killed outright had not written yet (at most
one interval) is lost; a failed write is kept and retried with the next flush. Memory is bounded:
beyond :data:`MAX_PENDING` waiting visits, new ones are dropped (and counted in ``dropped``)
until the next flush.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections.abc import Callable
from datetime import UTC, date, datetime

from flask import Flask, Response, after_this_request, current_app
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from billing.services import ip_sessions
from billing.services.ip_sessions import Visit

log = logging.getLogger(__name__)

FLUSH_AT = 10_000
"""Waiting visits that make a flush due before the interval is over."""
MAX_PENDING = 50_000
"""Waiting visits a process keeps at most (a few megabytes)."""
MAX_WRITTEN = 200_000
"""Visits of the current day a process remembers as written, so it does not write them again."""


class IpSessionCounter:
    """Visits through office networks seen by this process, until they are written."""

    def __init__(
        self,
        session_factory: Callable[[], Session],
        *,
        key: bytes,
        flush_interval: float = 60.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session_factory = session_factory
        self._key = key
        self.flush_interval = flush_interval
        self._monotonic = monotonic
        self._pending: set[Visit] = set()
        self._written: set[Visit] = set()
        self._written_day: date | None = None
        self._next_flush = monotonic() + flush_interval
        self._flush_claimed_at: float | None = None
        self._lock = threading.Lock()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._pending)

    def record(self, group: str, address: str, now: datetime) -> bool:
        """Note that ``address`` read through ``group`` (a public id) at ``now``; True, once per
        flush, when the caller should arrange for :meth:`flush` to run."""
        visit = (group, now.astimezone(UTC).date(), address)
        with self._lock:
            if visit in self._written or visit in self._pending:
                pass
            elif len(self._pending) < MAX_PENDING:
                self._pending.add(visit)
            else:
                self.dropped += 1
            return self._claim_if_due()

    def flush_due(self) -> bool:
        """True, once per flush, when visits are waiting and their interval is over (asked after
        every response, so the last visits of a quiet hour are not left waiting for the next)."""
        if not self._pending:  # read without the lock: a visit just missed is seen next time
            return False
        with self._lock:
            return self._claim_if_due()

    def _claim_if_due(self) -> bool:
        """(Under the lock.) Claim the flush when one is due and none is on its way."""
        if not self._pending:
            return False
        moment = self._monotonic()
        claimed = self._flush_claimed_at
        if claimed is not None and moment < claimed + self.flush_interval:
            return False  # a flush is on its way (or was lost: claimed again after a while)
        if len(self._pending) >= FLUSH_AT or moment >= self._next_flush:
            self._flush_claimed_at = moment
            return True
        return False

    def _take(self) -> set[Visit]:
        with self._lock:
            batch, self._pending = self._pending, set()
            self._next_flush = self._monotonic() + self.flush_interval
            self._flush_claimed_at = None
        return batch

    def _settle(self, batch: set[Visit], *, written: bool) -> None:
        """Put a batch that failed back in the queue, or remember a written one (its newest day
        only) so the same visits are not written again today."""
        with self._lock:
            if not written:
                room = max(MAX_PENDING - len(self._pending), 0)
                self._pending.update(list(batch)[:room])
                return
            newest = max(day for _group, day, _address in batch)
            if self._written_day is None or newest > self._written_day:
                self._written, self._written_day = set(), newest
            if len(self._written) + len(batch) > MAX_WRITTEN:
                self._written.clear()
            self._written.update(v for v in batch if v[1] == self._written_day)

    def flush(self) -> int:
        """Write the waiting visits in a transaction of their own; return the new sessions.

        Never raises for a database failure: it is logged and the visits wait for the next flush.
        """
        batch = self._take()
        if not batch:
            return 0
        try:
            with self._session_factory() as session:
                added = ip_sessions.write_batch(session, batch, key=self._key)
                session.commit()
        except SQLAlchemyError:
            log.exception("Writing %d IP session visit(s) failed; retried next flush", len(batch))
            self._settle(batch, written=False)
            return 0
        self._settle(batch, written=True)
        return added


def init_app(app: Flask) -> None:
    """Give ``app`` its counter (``app.extensions["ip_sessions"]``), flushed at process exit."""
    counter = IpSessionCounter(
        app.extensions["db_sessionmaker"],
        key=ip_sessions.visitor_key(app.config["SECRET_KEYS"]),
        flush_interval=float(app.config["GROUP_IP_SESSIONS_FLUSH_INTERVAL"]),
    )
    app.extensions["ip_sessions"] = counter
    atexit.register(_flush_at_exit, weakref.ref(counter))
    flush_after_responses(app)


def flush_after_responses(app: Flask) -> None:
    """Have every response of ``app`` (the main app, and the API's own app that shares its
    counter) write the waiting visits once their interval is over."""
    app.after_request(_flush_after_any_response)


def _flush_after_any_response(response: Response) -> Response:
    """Once the interval is over, any response (not only a visit's) writes what is waiting, after
    it has been sent."""
    counter = current()
    if counter.flush_due():
        response.call_on_close(counter.flush)
    return response


def _flush_at_exit(ref: weakref.ref[IpSessionCounter]) -> None:
    counter = ref()
    if counter is not None and len(counter):
        counter.flush()


def current() -> IpSessionCounter:
    """The running app's counter."""
    return current_app.extensions["ip_sessions"]  # type: ignore[no-any-return]


def count(group: str, address: str, now: datetime) -> None:
    """Count a visit granted through ``group``'s office network during a request; when a flush
    is due, it runs once this request's response has been sent."""
    counter = current()
    if counter.record(group, address, now):

        @after_this_request
        def _flush_after_response(response: Response) -> Response:
            response.call_on_close(counter.flush)
            return response
