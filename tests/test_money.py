"""The mirror's money equals Stripe's, cent for cent, after a scripted history of a subscription."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.clock import FixedClock
from billing.gateway import StripeGateway
from billing.models import Invoice, SubscriptionEvent
from billing.services import payments, stripe_mirror
from tests.payments_support import (
    DECLINED_ON_CHARGE,
    VISA,
    ledger,
    only_subscription,
    plans_on_sale,
    reader_with_card,
    save_card,
)
from tests.stripe_server import LocalstripeServer

pytestmark = [pytest.mark.usefixtures("stripe"), pytest.mark.wall_clock]


def test_after_subscribe_switch_refund_fail_and_recover_the_invoices_equal_stripes_to_the_cent(
    session: Session, gateway: StripeGateway, stripe: LocalstripeServer, clock: FixedClock
) -> None:
    now = clock.now()
    plans_on_sale(session, gateway)
    reader = reader_with_card(session, gateway, stripe, now)
    payments.subscribe(session, gateway, reader, "individual-monthly", now=now)
    session.commit()
    first = session.scalars(select(Invoice)).one()
    refund = gateway.refund_invoice(first.stripe_id, amount=450, reason="requested_by_customer")
    assert refund.charge_id is not None
    stripe_mirror.sync_charge_refunds(session, gateway, refund.charge_id, now=now)
    save_card(session, gateway, stripe, reader, now, DECLINED_ON_CHARGE)
    with pytest.raises(payments.PaymentFailed):
        payments.switch_plan(session, gateway, reader, "individual-yearly", now=now)
    session.commit()
    save_card(session, gateway, stripe, reader, now, VISA)
    payments.retry_payment(session, gateway, reader, now=now)
    payments.switch_plan(session, gateway, reader, "individual-monthly", now=now)
    session.commit()

    assert reader.customer is not None
    truth = {i.id: i for i in gateway.list_invoices(customer_id=reader.customer.stripe_id)}
    refunded = {first.stripe_id: gateway.retrieve_charge(refund.charge_id).amount_refunded}
    session.expire_all()
    mirrored = {i.stripe_id: i for i in session.scalars(select(Invoice))}
    assert len(truth) == 3 and mirrored.keys() == truth.keys()
    for stripe_id, invoice in truth.items():
        mine = mirrored[stripe_id]
        assert (
            mine.subtotal,
            mine.tax,
            mine.total,
            mine.amount_paid,
            mine.amount_refunded,
            mine.currency,
            str(mine.status),
        ) == (
            invoice.subtotal,
            invoice.tax,
            invoice.total,
            invoice.amount_paid,
            refunded.get(stripe_id, 0),
            invoice.currency,
            invoice.status,
        ), stripe_id
    subscription = only_subscription(session)
    assert ledger(session) == [
        ("created", 0, 1200),
        ("refunded", 1200, 1200),
        ("downgraded", 1200, 1000),
        ("past_due", 1000, 1000),
        ("recovered", 1000, 1000),
        ("upgraded", 1000, 1200),
    ]
    deltas = session.scalars(select(SubscriptionEvent.mrr_delta)).all()
    assert sum(deltas) == subscription.monthly_revenue() == 1200
