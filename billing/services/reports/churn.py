"""Subscriber and revenue churn per month and currency, voluntary (cancelled) and involuntary
(payment failed), from the same movements as the MRR report
(:mod:`billing.services.reports.movements`)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from billing.services.reports import movements
from billing.services.reports.base import Column, Filters, Kind, Report, Table, share

COLUMNS = (
    Column("month", "Month", Kind.DATE),
    Column("currency", "Currency"),
    Column("customers_start", "Paying customers at the start", Kind.INT),
    Column("churned_voluntary", "Churned: cancelled", Kind.INT),
    Column("churned_involuntary", "Churned: payment failed", Kind.INT),
    Column("subscriber_churn", "Subscriber churn", Kind.PERCENT),
    Column("mrr_start", "MRR at the start", Kind.MONEY),
    Column("churn_voluntary", "Churned MRR: cancelled", Kind.MONEY),
    Column("churn_involuntary", "Churned MRR: payment failed", Kind.MONEY),
    Column("revenue_churn", "Revenue churn", Kind.PERCENT),
    Column("contraction", "Contraction MRR", Kind.MONEY),
    Column("gross_revenue_churn", "Gross revenue churn (churn + contraction)", Kind.PERCENT),
)


def build(session: Session, filters: Filters, now: datetime, limit: int | None) -> Table:
    """One row per month and currency; rates are shares of the month's start."""
    rows = []
    for m in movements.monthly(session, filters):
        rows.append(
            (
                m.month,
                m.currency,
                m.customers_start,
                m.churned_voluntary,
                m.churned_involuntary,
                share(m.churned_customers, m.customers_start),
                m.start,
                m.churn_voluntary,
                m.churn_involuntary,
                share(m.churn, m.start),
                m.contraction,
                share(m.churn + m.contraction, m.start),
            )
        )
    notes = [
        "A customer churns when their last subscription ends: involuntary when it ended past "
        "due (payment failed), voluntary otherwise. Rates are shares of the month's start "
        "(empty when nothing was paying at the start)."
    ]
    return Table(COLUMNS, rows, (), notes)


REPORT = Report(
    name="churn",
    title="Churn",
    description="Per month and currency: subscriber and revenue churn, voluntary (cancelled) "
    "and involuntary (payment failed).",
    columns=COLUMNS,
    filters=frozenset({"currency", "country", "owner"}),
    build=build,
)
