"""The revenue report's paid invoices equal what Stripe holds, to the cent (real localstripe)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.orm import Session

from billing.clock import FixedClock
from billing.gateway import StripeGateway
from billing.services import payments, reports, stripe_mirror
from billing.services.reports.base import Filters
from tests.payments_support import (
    VISA,
    plans_on_sale,
    reader_with_card,
)
from tests.stripe_server import LocalstripeServer

pytestmark = [pytest.mark.usefixtures("stripe"), pytest.mark.wall_clock]


def test_the_paid_invoices_of_the_revenue_report_are_what_stripe_holds(
    session: Session, gateway: StripeGateway, stripe: LocalstripeServer, clock: FixedClock
) -> None:
    now = clock.now()
    plans_on_sale(session, gateway)
    readers = [
        reader_with_card(session, gateway, stripe, now, number=VISA, email=f"r{n}@example.org")
        for n in range(3)
    ]
    for reader, plan in zip(
        readers, ["individual-monthly", "individual-yearly", "individual-monthly"], strict=True
    ):
        payments.subscribe(session, gateway, reader, plan, now=now)
    session.commit()
    payments.switch_plan(session, gateway, readers[2], "individual-yearly", now=now)
    session.commit()
    first = gateway.list_invoices(customer_id=readers[0].customer.stripe_id)[0]
    refund = gateway.refund_invoice(first.id, amount=300, reason="requested_by_customer")
    assert refund.charge_id is not None
    stripe_mirror.sync_charge_refunds(session, gateway, refund.charge_id, now=now)
    session.commit()
    day = now.date()
    filters = Filters(start=day - timedelta(days=1), end=day + timedelta(days=1))

    table = reports.get("invoices").build(session, filters, now, None)

    held = [
        invoice
        for reader in readers
        for invoice in gateway.list_invoices(customer_id=reader.customer.stripe_id)
        if invoice.status == "paid"
    ]
    [totals] = table.totals
    assert totals[0] == f"Total: {len(held)} paid"
    assert totals[9] == sum(i.total for i in held), "gross"
    assert totals[10] == sum(i.amount_paid for i in held), "paid"
    assert totals[11] == gateway.retrieve_charge(refund.charge_id).amount_refunded == 300
