"""The MRR ledger starts a subscription at its first payment, whatever Stripe's status says."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.clock import FixedClock
from billing.gateway import StripeGateway
from billing.models import SubscriptionEvent, SubscriptionStatus
from billing.services import payments, stripe_mirror
from tests import factories
from tests.payments_support import (
    DECLINED_ON_CHARGE,
    FAILING_IBAN,
    GOOD_IBAN,
    ledger,
    only_subscription,
    reader_with_card,
    save_card,
    wait_for,
)
from tests.stripe_server import LocalstripeServer

pytestmark = [pytest.mark.usefixtures("stripe"), pytest.mark.wall_clock]

MONTHLY = "individual-monthly"


def _subscribe_by_sepa(
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    clock: FixedClock,
    iban: str,
) -> str:
    reader = factories.reader()
    method = stripe.create_sepa_debit(iban)
    payments.save_card(session, gateway, reader, method, now=clock.now())
    outcome = payments.subscribe(session, gateway, reader, MONTHLY, now=clock.now())
    session.commit()
    assert outcome.subscription is not None
    return outcome.subscription.stripe_id


@pytest.mark.usefixtures("plans")
def test_a_pending_sepa_debit_that_is_declined_never_enters_the_ledger(
    session: Session, gateway: StripeGateway, stripe: LocalstripeServer, clock: FixedClock
) -> None:
    stripe_id = _subscribe_by_sepa(session, gateway, stripe, clock, FAILING_IBAN)

    assert only_subscription(session).status == SubscriptionStatus.ACTIVE, "Stripe says active"
    assert ledger(session) == [], "but nothing is paid yet: no MRR"

    assert wait_for(lambda: gateway.retrieve_subscription(stripe_id).status == "canceled", session)
    stripe_mirror.sync_subscription(session, gateway, stripe_id, now=clock.now())
    session.commit()

    assert only_subscription(session).status == SubscriptionStatus.CANCELED
    assert ledger(session) == [], "it never started, so it did not churn either"


@pytest.mark.usefixtures("plans")
def test_a_sepa_debit_starts_the_subscription_in_the_ledger_when_it_clears(
    session: Session, gateway: StripeGateway, stripe: LocalstripeServer, clock: FixedClock
) -> None:
    stripe_id = _subscribe_by_sepa(session, gateway, stripe, clock, GOOD_IBAN)
    invoice_id = gateway.retrieve_subscription(stripe_id).latest_invoice_id
    assert invoice_id is not None

    assert wait_for(lambda: gateway.retrieve_invoice(invoice_id).status == "paid", session)
    stripe_mirror.sync_invoice(session, gateway, invoice_id, now=clock.now())
    session.commit()

    assert ledger(session) == [("created", 0, 1200)]
    start = session.scalars(select(SubscriptionEvent)).one()
    paid = gateway.retrieve_invoice(invoice_id)
    # localstripe has no paid_at, and its invoice's time moves by a second when a debit clears.
    assert abs(start.occurred_at - (paid.paid_at or paid.created)) <= timedelta(seconds=2)
    stripe_mirror.sync_subscription(session, gateway, stripe_id, now=clock.now())
    session.commit()
    assert ledger(session) == [("created", 0, 1200)], "the start is logged once"


@pytest.mark.usefixtures("plans")
def test_a_declined_card_and_a_declined_debit_leave_the_same_empty_ledger(
    session: Session, gateway: StripeGateway, stripe: LocalstripeServer, clock: FixedClock
) -> None:
    reader = reader_with_card(session, gateway, stripe, clock.now(), number=DECLINED_ON_CHARGE)
    with pytest.raises(payments.PaymentFailed):
        payments.subscribe(session, gateway, reader, MONTHLY, now=clock.now())
    session.commit()
    card_subscription = only_subscription(session)
    assert card_subscription.status == SubscriptionStatus.INCOMPLETE

    payments.cancel_now(session, gateway, reader, now=clock.now())
    session.commit()

    assert ledger(session) == []
    save_card(session, gateway, stripe, reader, clock.now(), "4242424242424242")
    assert ledger(session) == []
