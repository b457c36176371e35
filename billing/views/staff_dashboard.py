"""The staff home, ``/staff/``: for finance staff and admins a dashboard of the last 12 months
(MRR, revenue, paying customers and group seats, trials started and converted) as SVG charts
with their numbers beside them; for support staff, the way to their tools.

It joins the staff blueprint; it replaces the simple staff home at merge.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from flask import render_template
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from billing import db
from billing.clock import current_clock
from billing.models import Invoice, InvoiceStatus, StaffRole, Subscription, Trial, TrialStatus
from billing.models.payments import ENDED_STATUSES
from billing.services.reports import movements
from billing.services.reports.base import Filters, month_start, months
from billing.views import guards
from billing.views.charts import Series, bar_chart
from billing.views.staff import bp
from billing.views.staff_home import SECTIONS

MONTHS = 12
CURRENCY = "eur"


def _window(today: date) -> list[date]:
    first = month_start(today)
    for _ in range(MONTHS - 1):
        first = month_start(first - timedelta(days=1))
    return months(first, today)


def _by_month(moments: list[tuple[datetime, int]], window: list[date]) -> list[int]:
    sums = dict.fromkeys(window, 0)
    for moment, value in moments:
        key = month_start(moment.date())
        if key in sums:
            sums[key] += value
    return [sums[m] for m in window]


def dashboard_numbers(session: Session, today: date) -> dict[str, Any]:
    """The dashboard's series over the last 12 months (EUR), and the counts of now."""
    window = _window(today)
    filters = Filters(start=window[0], end=today, currency=CURRENCY)
    found = [m for m in movements.monthly(session, filters) if m.currency == CURRENCY]
    start_at = filters.start_at
    paid = session.execute(
        select(Invoice.created_at, Invoice.total - Invoice.tax).where(
            Invoice.status == InvoiceStatus.PAID,
            Invoice.currency == CURRENCY,
            Invoice.created_at >= start_at,
        )
    ).all()
    started = session.execute(select(Trial.started_at, 1).where(Trial.started_at >= start_at)).all()
    converted = session.execute(
        select(Trial.converted_at, 1).where(
            Trial.status == TrialStatus.CONVERTED, Trial.converted_at >= start_at
        )
    ).all()
    running = Subscription.status.not_in([*ENDED_STATUSES, "incomplete"])
    readers_now = session.scalar(
        select(func.count()).where(running, Subscription.reader_id.is_not(None))
    )
    seats_now = session.scalar(
        select(func.coalesce(func.sum(Subscription.quantity), 0)).where(
            running, Subscription.group_id.is_not(None)
        )
    )
    labels = [m.strftime("%Y-%m") for m in window]
    return {
        "labels": labels,
        "mrr": [m.end for m in found] or [0] * len(window),
        "revenue": _by_month([(a, int(b)) for a, b in paid], window),
        "customers": [m.customers_end for m in found] or [0] * len(window),
        "trials_started": _by_month([(a, 1) for a, _ in started], window),
        "trials_converted": _by_month([(a, 1) for a, _ in converted if a is not None], window),
        "readers_now": int(readers_now or 0),
        "seats_now": int(seats_now or 0),
    }


@bp.get("/")
@guards.staff_required(StaffRole.SUPPORT, StaffRole.FINANCE)
def home() -> str:
    """The staff home: the dashboard for finance and admins, the tools for everyone."""
    role = guards.reader().staff_role
    sections = [s for s in SECTIONS if s.allows(role)]
    if role not in (StaffRole.FINANCE, StaffRole.ADMIN):
        return render_template(
            "staff/home.html", numbers=None, charts={}, sections=sections, role=role
        )
    numbers = dashboard_numbers(db.session(), current_clock().now().date())
    labels = numbers["labels"]
    charts = {
        "mrr": bar_chart(
            "chart-mrr",
            "MRR at each month's end (EUR, without VAT)",
            labels,
            [Series("MRR", numbers["mrr"])],
            unit="EUR",
        ),
        "revenue": bar_chart(
            "chart-revenue",
            "Revenue per month (paid invoices, EUR, without VAT)",
            labels,
            [Series("Revenue", numbers["revenue"])],
            unit="EUR",
        ),
        "customers": bar_chart(
            "chart-customers",
            "Paying customers at each month's end",
            labels,
            [Series("Paying customers", numbers["customers"])],
        ),
        "trials": bar_chart(
            "chart-trials",
            "Trials started and converted per month",
            labels,
            [
                Series("Started", numbers["trials_started"]),
                Series("Converted", numbers["trials_converted"]),
            ],
        ),
    }
    return render_template(
        "staff/home.html", numbers=numbers, charts=charts, sections=sections, role=role
    )
