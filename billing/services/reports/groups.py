"""Group subscriptions as they stand now: seats bought, used and idle, utilisation, IP ranges,
and the renewal date, per group; and the anonymous IP sessions of the report's range.

Columns this report reads (renamed here only, at merge): ``groups.name, country``;
``subscriptions.group_id, quantity, status, current_period_end, cancel_at_period_end``;
``group_memberships.group_id, removed_at``; ``group_ip_ranges.group_id``;
``group_ip_sessions.group_id, day, sessions`` (one visitor address per day, see
:mod:`billing.services.ip_sessions`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from billing.models import Group, GroupIPRange, GroupMembership, Plan, Subscription
from billing.models.payments import ENDED_STATUSES
from billing.services import ip_sessions
from billing.services.reports.base import Column, Filters, Kind, Report, Table, share

COLUMNS = (
    Column("group", "Group"),
    Column("country", "Country"),
    Column("plan", "Plan"),
    Column("status", "Status"),
    Column("bought", "Seats bought", Kind.INT),
    Column("used", "Seats used", Kind.INT),
    Column("idle", "Seats idle", Kind.INT),
    Column("utilisation", "Utilisation", Kind.PERCENT),
    Column("ip_ranges", "IP ranges", Kind.INT),
    Column("ip_sessions", "IP sessions in the range", Kind.INT),
    Column("renews", "Renews (or ends)", Kind.DATETIME),
)


def _counts(session: Session, model: Any, *where: Any) -> dict[int, int]:
    query = select(model.group_id, func.count()).where(*where).group_by(model.group_id)
    return {group_id: int(count) for group_id, count in session.execute(query)}


def build(session: Session, filters: Filters, now: datetime, limit: int | None) -> Table:
    """One row per group with its running subscription (if any); totals over all groups."""
    used = _counts(session, GroupMembership, GroupMembership.removed_at.is_(None))
    ranges = _counts(session, GroupIPRange)
    sessions = ip_sessions.totals(session, first=filters.start, last=filters.end)
    running = {
        sub.group_id: sub
        for sub in session.scalars(
            select(Subscription)
            .where(Subscription.group_id.is_not(None), Subscription.status.not_in(ENDED_STATUSES))
            .order_by(Subscription.created_at)
        )
    }
    query = select(Group).order_by(Group.name, Group.id)
    if filters.country:
        query = query.where(Group.country == filters.country)
    rows = []
    sums = [0, 0, 0]
    sessions_sum = 0
    for group in session.scalars(query):
        sub = running.get(group.id)
        plan = session.get(Plan, sub.plan_id) if sub is not None else None
        if filters.plan and (plan is None or plan.code != filters.plan):
            continue
        bought = sub.quantity if sub is not None else 0
        seated = used.get(group.id, 0)
        idle = max(bought - seated, 0)
        sums[0] += bought
        sums[1] += seated
        sums[2] += idle
        sessions_sum += sessions.get(group.id, 0)
        rows.append(
            (
                group.name,
                group.country,
                plan.code if plan is not None else None,
                sub.status.value if sub is not None else "no subscription",
                bought,
                seated,
                idle,
                share(seated, bought),
                ranges.get(group.id, 0),
                sessions.get(group.id, 0),
                sub.current_period_end if sub is not None else None,
            )
        )
    totals = [
        (
            f"{len(rows)} group" if len(rows) == 1 else f"{len(rows)} groups",
            None,
            None,
            None,
            *sums,
            share(sums[1], sums[0]),
            None,
            sessions_sum,
            None,
        )
    ]
    notes = [
        "Seats and ranges as things stand now: a snapshot of every group.",
        "IP sessions are those of the range: one per visitor address per day (UTC) reading "
        "anonymously through the group's office networks.",
    ]
    return Table(COLUMNS, rows, totals if rows else [], notes)


REPORT = Report(
    name="groups",
    title="Groups and seats",
    description=(
        "Per group: seats bought, used and idle, utilisation, IP ranges and their anonymous "
        "sessions, renewal date."
    ),
    columns=COLUMNS,
    filters=frozenset({"plan", "country"}),
    build=build,
)
