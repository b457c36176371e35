"""Trials per weekly or monthly cohort (by the day they started): started, converted, expired,
still running, the conversion rate and the time to convert.

Columns this report reads (renamed here only, at merge): ``trials.started_at, status,
converted_at``; the reader's ``country`` (a deleted reader's trial has none and is kept); the
reader's ``group_memberships`` for the owner filter. A trial is always a reader's own, so the
owner filter sorts trials by where the reader ended up: ``group``, the trials of readers who have
held a seat in a group (an organisation's subscription) since the trial started, whether it
removed them later or not; ``individual``, all the others (a deleted reader's trial included).
Converted still means the reader subscribed themselves.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from statistics import median

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from billing.models import GroupMembership, Reader, Trial, TrialStatus
from billing.services.reports.base import (
    Column,
    Filters,
    Granularity,
    Kind,
    Owner,
    Report,
    Table,
    period_of,
    share,
)

COLUMNS = (
    Column("cohort", "Cohort (started)"),
    Column("started", "Started", Kind.INT),
    Column("converted", "Converted", Kind.INT),
    Column("expired", "Expired", Kind.INT),
    Column("running", "Still running", Kind.INT),
    Column("conversion", "Conversion rate", Kind.PERCENT),
    Column("mean_days", "Mean days to convert", Kind.DECIMAL),
    Column("median_days", "Median days to convert", Kind.DECIMAL),
)


def _days(trial: Trial) -> Decimal:
    assert trial.converted_at is not None
    seconds = (trial.converted_at - trial.started_at).total_seconds()
    return (Decimal(seconds) / 86400).quantize(Decimal("0.1"))


def _row(cohort: str, trials: list[Trial]) -> tuple[object, ...]:
    converted = [t for t in trials if t.status == TrialStatus.CONVERTED]
    expired = sum(1 for t in trials if t.status == TrialStatus.EXPIRED)
    running = sum(1 for t in trials if t.status == TrialStatus.ACTIVE)
    days = [_days(t) for t in converted if t.converted_at is not None]
    mean = (sum(days, Decimal(0)) / len(days)).quantize(Decimal("0.1")) if days else None
    middle = Decimal(median(days)).quantize(Decimal("0.1")) if days else None
    return (
        cohort,
        len(trials),
        len(converted),
        expired,
        running,
        share(len(converted), len(trials)),
        mean,
        middle,
    )


def build(session: Session, filters: Filters, now: datetime, limit: int | None) -> Table:
    """One row per cohort with trials in the range, and a total row."""
    granularity = filters.granularity or Granularity.MONTH
    if granularity == Granularity.QUARTER:
        granularity = Granularity.MONTH
    query = (
        select(Trial)
        .outerjoin(Reader, Trial.reader_id == Reader.id)
        .where(Trial.started_at >= filters.start_at, Trial.started_at < filters.end_before)
        .order_by(Trial.started_at, Trial.id)
    )
    if filters.country:
        query = query.where(Reader.country == filters.country)
    if filters.owner is not None:
        seated = (
            select(GroupMembership.id)
            .where(
                GroupMembership.reader_id == Trial.reader_id,
                or_(
                    GroupMembership.removed_at.is_(None),
                    GroupMembership.removed_at > Trial.started_at,
                ),
            )
            .exists()
        )
        query = query.where(seated if filters.owner == Owner.GROUP else ~seated)
    cohorts: dict[str, list[Trial]] = {}
    everyone: list[Trial] = []
    for trial in session.scalars(query):
        cohorts.setdefault(period_of(trial.started_at.date(), granularity), []).append(trial)
        everyone.append(trial)
    rows = [_row(cohort, trials) for cohort, trials in cohorts.items()]
    totals = [_row("All cohorts", everyone)] if everyone else []
    notes = [
        "A cohort is the trials that started in the week or month. Converted: the reader "
        "subscribed (the trial's status); time to convert runs from the trial's start."
    ]
    if filters.owner is not None:
        notes.append(
            "Group: trials of readers who have held a group seat since the trial started; "
            "individual: all the others."
        )
    return Table(COLUMNS, rows, totals, notes)


REPORT = Report(
    name="trials",
    title="Trials",
    description="Started, converted and expired per weekly or monthly cohort, the conversion "
    "rate and the time to convert.",
    columns=COLUMNS,
    filters=frozenset({"country", "owner"}),
    build=build,
    default_granularity=Granularity.MONTH,
)
