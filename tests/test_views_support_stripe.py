"""Support cancels a subscription and finance refunds an invoice, for a reader, on localstripe."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.clock import FixedClock
from billing.gateway import StripeGateway
from billing.models import AuditLog, Invoice, StaffRole
from billing.services import payments
from tests import factories
from tests.conftest import csrf_token
from tests.helpers import login
from tests.payments_support import only_subscription, plans_on_sale, reader_with_card
from tests.stripe_server import LocalstripeServer

pytestmark = [pytest.mark.usefixtures("stripe"), pytest.mark.wall_clock]


def test_support_cancels_at_period_end_and_finance_refunds_part_of_an_invoice(
    client: FlaskClient,
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    clock: FixedClock,
) -> None:
    plans_on_sale(session, gateway)
    reader = reader_with_card(session, gateway, stripe, clock.now())
    payments.subscribe(session, gateway, reader, "individual-monthly", now=clock.now())
    session.commit()
    page = f"/staff/readers/{reader.public_id}/support"
    login(client, factories.reader(staff_role=StaffRole.SUPPORT))

    cancelled = client.post(
        f"/staff/readers/{reader.public_id}/cancel",
        data={
            "when": "period_end",
            "reason": "Moving abroad",
            "csrf_token": csrf_token(client, page),
        },
    )

    assert cancelled.status_code == 302
    assert only_subscription(session).cancel_at_period_end
    invoice = session.scalars(select(Invoice)).one()
    login(client, factories.reader(staff_role=StaffRole.FINANCE))
    too_much = client.post(
        f"/staff/readers/{reader.public_id}/invoices/{invoice.id}/refund",
        data={"amount": "99.00", "reason": "x", "csrf_token": csrf_token(client, page)},
    )
    refunded = client.post(
        f"/staff/readers/{reader.public_id}/invoices/{invoice.id}/refund",
        data={"amount": "3.50", "reason": "Outage", "csrf_token": csrf_token(client, page)},
    )

    assert too_much.status_code == 400 and "Refund between 0.01 and 12.00" in too_much.get_data(
        as_text=True
    )
    assert refunded.status_code == 302
    session.expire_all()
    assert session.get_one(Invoice, invoice.id).amount_refunded == 350
    actions = session.scalars(select(AuditLog.action).order_by(AuditLog.id)).all()
    assert "support.subscription_cancelled" in actions and "support.invoice_refunded" in actions
    [entry] = session.scalars(
        select(AuditLog).where(AuditLog.action == "support.invoice_refunded")
    ).all()
    assert entry.details["before"]["refunded"] == 0 and entry.details["after"]["refunded"] == 350
