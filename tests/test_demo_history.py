"""seed-demo's year of history: made once, marked as demo data, and the reports agree on it."""

from __future__ import annotations

from datetime import date

from flask.testing import FlaskCliRunner
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from billing.clock import FixedClock
from billing.models import Customer, Invoice, Reader, StaffRole, SubscriptionEvent
from billing.services import reports
from billing.services.reports import movements
from billing.services.reports.base import Filters, Granularity


def test_seed_demo_makes_a_year_of_demo_history_once_and_the_reports_agree_on_it(
    runner: FlaskCliRunner, session: Session, clock: FixedClock
) -> None:
    first = runner.invoke(args=["billing", "seed-demo"])
    second = runner.invoke(args=["billing", "seed-demo"])

    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    assert "A year of demo history" in first.output
    assert "A year of demo history" not in second.output, "made once"
    assert "finance@example.org" in first.output and "support@example.org" in first.output
    roles = dict(session.execute(select(Reader.email, Reader.staff_role)).all())
    assert roles["finance@example.org"] == StaffRole.FINANCE
    assert roles["support@example.org"] == StaffRole.SUPPORT
    ids = session.scalars(select(Customer.stripe_id)).all()
    assert ids and all(i.startswith("demo_") for i in ids)
    assert all(n.startswith("DEMO-") for n in session.scalars(select(Invoice.number)))
    assert session.scalar(select(func.count()).select_from(SubscriptionEvent)) > 100
    year = Filters(start=date(2025, 11, 1), end=date(2026, 11, 30), granularity=Granularity.QUARTER)
    found = movements.monthly(session, year)
    assert all(m.balances for m in found)
    assert found[-1].end > 0 and sum(m.churn for m in found) > 0
    revenue = reports.get("invoices").build(session, year, clock.now(), 0)
    vat = reports.get("vat").build(session, year, clock.now(), None)
    [eur] = revenue.totals
    sales = [r for r in vat.rows if r[2] == "sale"]
    assert (sum(r[6] for r in sales), sum(r[7] for r in sales)) == (eur[7], eur[8])
