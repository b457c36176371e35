"""A per-process cache of entitlement decisions, so the content site's checks skip the database.

What can change a decision, and how every process learns of it:

- **Writes** to subscriptions, trials, complimentary grants, group memberships, groups, their IP
  ranges and readers (verification, deletion) append an :class:`EntitlementChange` row in the same
  transaction, from a SQLAlchemy ``after_flush`` hook (:func:`track_changes`), so no code path can
  forget it. Bulk ``UPDATE`` statements bypass the hook; the only one (``tick`` ending trials) changes
  nothing the clock does not already end, see below.
- **Time**: a granted decision is cached only until its ``until`` (the trial end, the paid period
  end, the end of a grace), and no entry lives longer than ``max_age`` (default 30 s), which bounds
  what time alone can change for refusals (a grant that starts later, say).
- Each process polls the change log at most every ``poll_interval`` (default 1 s) before answering
  from the cache, and drops the entries of every reader named there. A change to a group (its
  subscription, its office ranges) drops only what that group affects: the cached decisions of
  its members, its own cached decision for anonymous visitors, and its ranges in the office
  network index, which is reloaded for that group alone. So a change reaches every process within
  ``poll_interval`` plus one request.
- Anonymous visitors (:meth:`DecisionCache.lookup_ip`) are found in a :class:`NetworkIndex` of
  every approved office range, built once per process, then searched with ``bisect``.

The cache is keyed by the reader's public id and holds a :class:`CachedReader` (ids and the
decision), never ORM objects. It holds at most ``max_entries`` entries (unknown ids included) and
starts over when full, so no caller can make it grow without bound.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import event, func, insert, inspect, select
from sqlalchemy.orm import Session, joinedload

from billing.models import (
    ComplimentaryGrant,
    EntitlementChange,
    Group,
    GroupIPRange,
    GroupMembership,
    Reader,
    Subscription,
    Trial,
)
from billing.services.entitlements import Decision, Reason, decide
from billing.services.group_networks import NetworkIndex

_READER_LINKED = (Subscription, Trial, ComplimentaryGrant)


@dataclass(frozen=True)
class CachedReader:
    """What the API needs about a reader: the ids and the decision, with its cache deadline."""

    reader_id: int | None
    public_id: str
    decision: Decision
    expires_at: datetime


class DecisionCache:
    """Decisions by reader public id, invalidated through the entitlement change log."""

    def __init__(
        self,
        *,
        past_due_grace: timedelta,
        max_age: timedelta = timedelta(seconds=30),
        poll_interval: float = 1.0,
        max_entries: int = 200_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.past_due_grace = past_due_grace
        self.max_age = max_age
        self.poll_interval = poll_interval
        self.max_entries = max_entries
        self._monotonic = monotonic
        self._entries: dict[str, CachedReader] = {}
        self._public_ids: dict[int, str] = {}
        self._group_readers: dict[int, set[int]] = {}
        self._group_entries: dict[int, tuple[Decision, datetime]] = {}
        self._networks: NetworkIndex | None = None
        self._stale_networks: set[int] = set()
        self._last_change_id: int | None = None
        self._next_poll = 0.0
        self._lock = threading.Lock()

    def lookup(self, session: Session, public_id: str, now: datetime) -> CachedReader:
        """The decision for the reader with ``public_id`` (unknown readers get a refusal)."""
        self._poll(session)
        entry = self._entries.get(public_id)
        if entry is not None and now < entry.expires_at:
            return entry
        entry, groups = self._compute(session, public_id, now)
        with self._lock:
            if len(self._entries) >= self.max_entries:
                # Bounded memory whatever ids callers ask about; refilling is cheap and rare.
                self._entries.clear()
                self._public_ids.clear()
            self._entries[public_id] = entry
            if entry.reader_id is not None:
                self._public_ids[entry.reader_id] = public_id
                for group_id in groups:
                    self._group_readers.setdefault(group_id, set()).add(entry.reader_id)
        return entry

    def lookup_ip(self, session: Session, ip: str, now: datetime) -> Decision:
        """The decision for an anonymous visitor from ``ip`` (a valid address): ``group_ip`` when
        it lies in an approved office range of a group with a valid subscription."""
        self._poll(session)
        if self._stale_networks or self._networks is None:
            networks = self._current_networks(session)
        else:
            networks = self._networks
        group_id = networks.find(ip)
        if group_id is None:
            return _NO_GROUP
        cached = self._group_entries.get(group_id)
        if cached is not None and now < cached[1]:
            return cached[0]
        group = (
            session.scalars(
                select(Group)
                .where(Group.id == group_id)
                .options(joinedload(Group.subscriptions).joinedload(Subscription.plan))
                .execution_options(populate_existing=True)
            )
            .unique()
            .one_or_none()
        )
        decision = decide(
            None, now, ip, past_due_grace=self.past_due_grace, networks=lambda _address: group
        )
        expires_at = now + self.max_age
        if decision.until is not None:
            expires_at = min(expires_at, decision.until)
        with self._lock:
            self._group_entries[group_id] = (decision, expires_at)
        return decision

    def _current_networks(self, session: Session) -> NetworkIndex:
        networks = self._networks
        if networks is None:
            networks = NetworkIndex(session.execute(_APPROVED_RANGES))
            with self._lock:
                self._networks, self._stale_networks = networks, set()
            return networks
        if self._stale_networks:
            with self._lock:
                stale, self._stale_networks = self._stale_networks, set()
            for group_id in stale:
                rows = session.execute(
                    select(
                        GroupIPRange.version, GroupIPRange.first_address, GroupIPRange.last_address
                    ).where(
                        GroupIPRange.group_id == group_id, GroupIPRange.approved_at.is_not(None)
                    )
                )
                networks.replace_group(group_id, rows)
        return networks

    def clear(self) -> None:
        """Forget every cached decision."""
        with self._lock:
            self._entries.clear()
            self._public_ids.clear()
            self._group_readers.clear()
            self._group_entries.clear()
            self._networks = None

    def __len__(self) -> int:
        return len(self._entries)

    def _compute(
        self, session: Session, public_id: str, now: datetime
    ) -> tuple[CachedReader, list[int]]:
        # One round trip: a reader has few subscriptions and grants, so the joined rows stay few.
        reader = (
            session.scalars(
                select(Reader)
                .where(Reader.public_id == public_id)
                .options(
                    joinedload(Reader.subscriptions).joinedload(Subscription.plan),
                    joinedload(Reader.grants),
                    joinedload(Reader.trial),
                    joinedload(Reader.group_memberships)
                    .joinedload(GroupMembership.group)
                    .joinedload(Group.subscriptions)
                    .joinedload(Subscription.plan),
                )
                .execution_options(populate_existing=True)
            )
            .unique()
            .one_or_none()
        )
        decision = decide(reader, now, past_due_grace=self.past_due_grace)
        expires_at = now + self.max_age
        if decision.until is not None:
            expires_at = min(expires_at, decision.until)
        groups = [m.group_id for m in reader.group_memberships] if reader is not None else []
        entry = CachedReader(reader.id if reader else None, public_id, decision, expires_at)
        return entry, groups

    def _poll(self, session: Session) -> None:
        if self._monotonic() < self._next_poll:
            return
        self._next_poll = self._monotonic() + self.poll_interval
        if self._last_change_id is None:
            # First use: start from the end of the log; the cache is empty anyway.
            self._last_change_id = session.scalar(select(func.max(EntitlementChange.id))) or 0
            return
        rows = session.execute(
            select(EntitlementChange.id, EntitlementChange.reader_id, EntitlementChange.group_id)
            .where(EntitlementChange.id > self._last_change_id)
            .order_by(EntitlementChange.id)
        ).all()
        if not rows:
            return
        with self._lock:
            self._last_change_id = rows[-1].id
            readers = {row.reader_id for row in rows if row.reader_id is not None}
            for group_id in {row.group_id for row in rows if row.group_id is not None}:
                readers |= self._group_readers.pop(group_id, set())
                self._group_entries.pop(group_id, None)
                self._stale_networks.add(group_id)
            for reader_id in readers:
                public_id = self._public_ids.pop(reader_id, None)
                if public_id is not None:
                    self._entries.pop(public_id, None)


_NO_GROUP = Decision.refused(Reason.NONE)

_APPROVED_RANGES = select(
    GroupIPRange.version,
    GroupIPRange.first_address,
    GroupIPRange.last_address,
    GroupIPRange.group_id,
).where(GroupIPRange.approved_at.is_not(None))


def _affected(obj: Any) -> tuple[int | None, int | None]:
    """The (reader id, group id) whose decision a changed ``obj`` may alter: a membership alters
    only its reader's, a group's subscription or office range every member's and visitor's."""
    if isinstance(obj, Reader):
        return obj.id, None
    if isinstance(obj, GroupMembership):
        return obj.reader_id, None
    if isinstance(obj, _READER_LINKED):
        return getattr(obj, "reader_id", None), getattr(obj, "group_id", None)
    if isinstance(obj, Group):
        return None, obj.id
    if isinstance(obj, GroupIPRange):
        return None, obj.group_id
    return None, None


def _after_flush(session: Session, _context: Any) -> None:
    touched: set[tuple[int | None, int | None]] = set()
    for obj in [*session.new, *session.dirty, *session.deleted]:
        if isinstance(obj, Reader) and obj in session.dirty and not _verification_changed(obj):
            continue
        touched.add(_affected(obj))
    touched.discard((None, None))
    if not touched:
        return
    from billing.clock import current_clock

    now = current_clock().now()
    rows = [{"reader_id": r, "group_id": g, "changed_at": now} for r, g in sorted(touched, key=str)]
    session.connection().execute(insert(EntitlementChange), rows)


def _verification_changed(reader: Reader) -> bool:
    return bool(inspect(reader).attrs.email_verified_at.history.has_changes())


def track_changes(session_factory: Any) -> None:
    """Make every session from ``session_factory`` log entitlement changes as it flushes."""
    event.listen(session_factory, "after_flush", _after_flush)


def prune(session: Session, *, before: datetime) -> int:
    """Delete change-log rows older than ``before`` (every process has long polled them)."""
    from sqlalchemy import delete

    result = session.execute(delete(EntitlementChange).where(EntitlementChange.changed_at < before))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def current() -> DecisionCache:
    """The running app's decision cache."""
    from flask import current_app

    return current_app.extensions["decision_cache"]  # type: ignore[no-any-return]
