"""MRR and its movements per month and currency (definitions in
:mod:`billing.services.reports.movements`), with the roll-forward identity checked per row."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from billing.services.reports import movements
from billing.services.reports.base import Column, Filters, Kind, Report, Table

COLUMNS = (
    Column("month", "Month", Kind.DATE),
    Column("currency", "Currency"),
    Column("start", "MRR at the start", Kind.MONEY),
    Column("new", "New", Kind.MONEY),
    Column("expansion", "Expansion", Kind.MONEY),
    Column("reactivation", "Reactivation", Kind.MONEY),
    Column("contraction", "Contraction", Kind.MONEY),
    Column("churn", "Churn", Kind.MONEY),
    Column("end", "MRR at the end", Kind.MONEY),
    Column("customers", "Paying customers at the end", Kind.INT),
    Column("check", "Start + movements = end"),
)


def build(session: Session, filters: Filters, now: datetime, limit: int | None) -> Table:
    """One row per month and currency; totals per currency over the range."""
    rows = []
    sums: dict[str, list[int]] = {}
    for m in movements.monthly(session, filters):
        check = "yes" if m.balances else f"NO: off by {m.end - m.start - m.net_movement}"
        rows.append(
            (
                m.month,
                m.currency,
                m.start,
                m.new,
                m.expansion,
                m.reactivation,
                m.contraction,
                m.churn,
                m.end,
                m.customers_end,
                check,
            )
        )
        total = sums.setdefault(m.currency, [m.start, 0, 0, 0, 0, 0, 0])
        for index, value in enumerate(
            (m.new, m.expansion, m.reactivation, m.contraction, m.churn), start=1
        ):
            total[index] += value
        total[6] = m.end
    totals = []
    for currency, (start, new, expansion, reactivation, contraction, churn, end) in sums.items():
        balances = end == start + new + expansion + reactivation - contraction - churn
        totals.append(
            (
                "Range",
                currency,
                start,
                new,
                expansion,
                reactivation,
                contraction,
                churn,
                end,
                None,
                "yes" if balances else "NO",
            )
        )
    notes = [
        "ChartMogul's definitions, per customer. Churn counts when a subscription ends (for a "
        "cancellation at period end, at that end); past-due subscriptions count until Stripe "
        "ends them. Yearly plans count 1/12 a month; MRR excludes VAT.",
    ]
    return Table(COLUMNS, rows, totals, notes)


REPORT = Report(
    name="mrr",
    title="MRR and movements",
    description="Per month and currency: MRR at the start and end, new, expansion, "
    "reactivation, contraction and churn, with the roll-forward checked.",
    columns=COLUMNS,
    filters=frozenset({"currency", "country", "owner"}),
    build=build,
)
