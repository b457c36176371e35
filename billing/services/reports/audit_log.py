"""The audit log as a report (admins only, not in :data:`billing.services.reports.REPORTS`):
every entry in the range, filtered by who acted, what they did and to whom, newest last."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import String, cast, select
from sqlalchemy.orm import Session

from billing.models import AuditLog
from billing.services.reports.base import AnySelect, Column, Filters, Kind, Report, Table

COLUMNS = (
    Column("occurred_at", "Time (UTC)", Kind.DATETIME),
    Column("actor", "Who"),
    Column("action", "Action"),
    Column("target_type", "Subject type"),
    Column("target_id", "Subject"),
    Column("details", "Details (reason, before, after)"),
    Column("ip", "Address"),
)
TEXT_MAX_LENGTH = 320


@dataclass(frozen=True)
class AuditFilters:
    """Narrowing of the audit log beyond the range: text the actor, action or subject contains."""

    actor: str = ""
    action: str = ""
    subject: str = ""


def report(extra: AuditFilters) -> Report:
    """The audit log report for these filters."""

    def statement(filters: Filters) -> AnySelect:
        query = select(
            AuditLog.occurred_at,
            AuditLog.actor_label,
            AuditLog.action,
            AuditLog.target_type,
            AuditLog.target_id,
            cast(AuditLog.details, String),
            AuditLog.ip,
        ).where(AuditLog.occurred_at >= filters.start_at, AuditLog.occurred_at < filters.end_before)
        if extra.actor:
            query = query.where(AuditLog.actor_label.icontains(extra.actor, autoescape=True))
        if extra.action:
            query = query.where(AuditLog.action.icontains(extra.action, autoescape=True))
        if extra.subject:
            query = query.where(AuditLog.target_id.icontains(extra.subject, autoescape=True))
        return query.order_by(AuditLog.occurred_at, AuditLog.id)

    def build(session: Session, filters: Filters, now: datetime, limit: int | None) -> Table:
        query = statement(filters)
        if limit is not None:
            query = query.order_by(None).order_by(AuditLog.occurred_at.desc(), AuditLog.id.desc())
            query = query.limit(limit)
        return Table(COLUMNS, [tuple(row) for row in session.execute(query)])

    return Report(
        name="audit",
        title="Audit log",
        description="Who did what to whom, and when: staff actions, exports, account changes.",
        columns=COLUMNS,
        filters=frozenset(),
        build=build,
        statement=statement,
    )
