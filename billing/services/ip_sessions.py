"""Anonymous IP sessions: how much a group's office networks are used, per group per UTC day.

A **session** is one visitor address reading through a group on one UTC day, however many
articles it opens that day: the content site's anonymous check (``/api/v1/entitlement?ip=``, or
``/api/v1/entitlement/check`` with an ``ip``) granting ``group_ip`` is a visit, and the distinct
(address, day) pairs of a group are its sessions. IP access counts as usage, never as seats.

The request only notes the visit in memory (:mod:`billing.ip_session_counter`); batches come here
through :func:`write_batch`, which counts each visitor once however many processes saw it: the
visitor's keyed hash goes into ``group_ip_visitors`` first (``ON CONFLICT DO NOTHING``), and only
the rows that were new add to ``group_ip_sessions``. Addresses are never stored, only an HMAC of
the day and the address under a key of this purpose alone (:func:`visitor_key`); ``tick`` deletes
the hashes of past days (:func:`prune_visitors`), and the daily counts stay.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import date, timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from billing.models import Group, GroupIPSessions, GroupIPVisitor

Visit = tuple[str, date, str]
"""(group public id, UTC day, visitor address): one anonymous read through a group."""

_PURPOSE = b"tollgate.group-ip-sessions"
_CHUNK = 500
"""Rows per INSERT (three parameters each: well under every database's limit)."""


def visitor_key(secret_keys: Sequence[str]) -> bytes:
    """The key that hashes visitor addresses, derived from the first of ``SECRET_KEYS`` for this
    purpose only (a rotation mid-day can count a visitor once more that day, no worse)."""
    return hmac.new(secret_keys[0].encode(), _PURPOSE, hashlib.sha256).digest()


def _visitor(key: bytes, day: date, address: str) -> str:
    message = f"{day.isoformat()}|{address}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:32]


def _insert(session: Session) -> Any:
    return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


def write_batch(session: Session, visits: Iterable[Visit], *, key: bytes) -> int:
    """Count ``visits`` into the daily sessions; return how many sessions were new.

    A visitor already counted that day (by this or another process, in this or an earlier batch)
    adds nothing. Visits of a group that no longer exists are dropped. Rows are written in one
    sorted order, so two processes writing overlapping batches at once wait for each other
    instead of deadlocking.
    """
    visits = set(visits)
    if not visits:
        return 0
    public_ids = {group for group, _day, _address in visits}
    ids = {
        public_id: group_id
        for public_id, group_id in session.execute(
            select(Group.public_id, Group.id).where(Group.public_id.in_(public_ids))
        )
    }
    rows = sorted(
        {
            (ids[group], day, _visitor(key, day, address))
            for group, day, address in visits
            if group in ids
        }
    )
    insert = _insert(session)
    new: Counter[tuple[int, date]] = Counter()
    for at in range(0, len(rows), _CHUNK):
        chunk = [
            {"group_id": group_id, "day": day, "visitor": visitor}
            for group_id, day, visitor in rows[at : at + _CHUNK]
        ]
        inserted = session.execute(
            insert(GroupIPVisitor)
            .values(chunk)
            .on_conflict_do_nothing(index_elements=["group_id", "day", "visitor"])
            .returning(GroupIPVisitor.group_id, GroupIPVisitor.day)
        )
        new.update((group_id, day) for group_id, day in inserted)
    for (group_id, day), count in sorted(new.items()):
        upsert = insert(GroupIPSessions).values(group_id=group_id, day=day, sessions=count)
        session.execute(
            upsert.on_conflict_do_update(
                index_elements=["group_id", "day"],
                set_={"sessions": GroupIPSessions.sessions + upsert.excluded.sessions},
            )
        )
    return sum(new.values())


def prune_visitors(session: Session, *, before: date) -> int:
    """Delete the visitor hashes of days before ``before`` (their sessions stay counted)."""
    result = session.execute(delete(GroupIPVisitor).where(GroupIPVisitor.day < before))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def daily(session: Session, group: Group, *, first: date, last: date) -> list[tuple[date, int]]:
    """The group's sessions per day from ``first`` to ``last`` (both included), newest first;
    days without a session are left out."""
    query = (
        select(GroupIPSessions.day, GroupIPSessions.sessions)
        .where(
            GroupIPSessions.group_id == group.id,
            GroupIPSessions.day >= first,
            GroupIPSessions.day <= last,
            GroupIPSessions.sessions > 0,
        )
        .order_by(GroupIPSessions.day.desc())
    )
    return [(day, int(count)) for day, count in session.execute(query)]


def last_days(
    session: Session, group: Group, *, today: date, days: int = 30
) -> list[tuple[date, int]]:
    """The group's sessions per day over the ``days`` days ending with ``today``, newest first."""
    return daily(session, group, first=today - timedelta(days=days - 1), last=today)


def totals(session: Session, *, first: date, last: date) -> dict[int, int]:
    """Sessions per group id from ``first`` to ``last`` (both included)."""
    query = (
        select(GroupIPSessions.group_id, func.sum(GroupIPSessions.sessions))
        .where(GroupIPSessions.day >= first, GroupIPSessions.day <= last)
        .group_by(GroupIPSessions.group_id)
    )
    return {group_id: int(total or 0) for group_id, total in session.execute(query)}
