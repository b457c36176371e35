"""The welcome mail, once per new subscriber, however their first payment went through: at once,
after 3-D Secure, or with another card after a decline; never for a renewal or a group (against a
real localstripe, with the outbox as the console backend keeps it)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from flask import Flask
from flask.testing import FlaskCliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.clock import FixedClock
from billing.gateway import StripeGateway
from billing.models import Invoice, InvoiceStatus, OutboxMessage, Plan, Reader, SubscriptionStatus
from billing.services import groups, payments, stripe_mirror
from tests import factories
from tests.conftest import Outbox
from tests.payments_support import (
    DECLINED_ON_CHARGE,
    VISA,
    ministry_group,
    only_subscription,
    reader_with_card,
    save_card,
    store_and_handle,
)
from tests.stripe_server import LocalstripeServer
from webhooks.process import Outcome

pytestmark = [pytest.mark.usefixtures("stripe"), pytest.mark.wall_clock]

MONTHLY = "individual-monthly"
THREE_D_SECURE = "4000002500003155"
"""A card whose bank asks for 3-D Secure on every payment and then pays (localstripe's list)."""


def welcomes(outbox: Outbox, to: str | None = None) -> list[OutboxMessage]:
    """The welcome mails in the outbox (to ``to`` only, when given)."""
    return [m for m in outbox.all(to) if m.subject.startswith("Welcome to ")]


def test_a_first_payment_confirmed_with_3d_secure_welcomes_the_reader_once(
    app: Flask,
    plans: dict[str, Plan],
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    clock: FixedClock,
    outbox: Outbox,
) -> None:
    reader = reader_with_card(session, gateway, stripe, clock.now(), number=THREE_D_SECURE)

    outcome = payments.subscribe(session, gateway, reader, MONTHLY, now=clock.now())
    session.commit()

    assert outcome.subscription is not None and outcome.action_client_secret is not None
    assert welcomes(outbox) == [], "not welcomed before the bank said yes"
    invoice = session.scalars(select(Invoice)).one()
    intent = gateway.invoice_payment_intent(invoice.stripe_id)
    assert intent is not None
    stripe.authenticate_payment_intent(intent.id, outcome.action_client_secret, success=True)

    # Stripe reports the payment, and the page the bank sends the reader back to looks too.
    for _ in range(2):
        succeeded = {"id": invoice.stripe_id}
        assert store_and_handle(app, "invoice.payment_succeeded", succeeded, clock) == (
            Outcome.PROCESSED
        )
    stripe_mirror.sync_subscription(
        session, gateway, outcome.subscription.stripe_id, now=clock.now()
    )
    session.commit()

    assert only_subscription(session).status == SubscriptionStatus.ACTIVE
    [welcome] = welcomes(outbox, reader.email)
    assert "Your subscription is active" in welcome.body
    assert len(welcomes(outbox)) == 1


def test_a_declined_first_payment_paid_with_another_card_welcomes_the_reader_once(
    app: Flask,
    plans: dict[str, Plan],
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    clock: FixedClock,
    outbox: Outbox,
) -> None:
    reader = reader_with_card(session, gateway, stripe, clock.now(), number=DECLINED_ON_CHARGE)
    with pytest.raises(payments.PaymentFailed):
        payments.subscribe(session, gateway, reader, MONTHLY, now=clock.now())
    session.commit()
    assert welcomes(outbox) == []

    save_card(session, gateway, stripe, reader, clock.now(), VISA)
    assert payments.retry_payment(session, gateway, reader, now=clock.now()) is None
    session.commit()

    assert only_subscription(session).status == SubscriptionStatus.ACTIVE
    assert len(welcomes(outbox, reader.email)) == 1
    invoice = session.scalars(select(Invoice)).one()
    for event_type in ("invoice.payment_succeeded", "invoice.paid", "invoice.payment_succeeded"):
        assert (
            store_and_handle(app, event_type, {"id": invoice.stripe_id}, clock) == Outcome.PROCESSED
        )
    assert len(welcomes(outbox)) == 1, "a replayed event welcomes nobody again"


def test_a_first_payment_that_went_through_at_once_welcomes_once_and_a_renewal_not_again(
    app: Flask,
    plans: dict[str, Plan],
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    clock: FixedClock,
    outbox: Outbox,
) -> None:
    reader = reader_with_card(session, gateway, stripe, clock.now(), number=VISA)
    outcome = payments.subscribe(session, gateway, reader, MONTHLY, now=clock.now())
    session.commit()
    assert outcome.subscription is not None
    assert len(welcomes(outbox, reader.email)) == 1

    # The next period's invoice, made and paid as Stripe does at the period's end.
    customer_id = outcome.subscription.customer.stripe_id
    renewal = stripe.request(
        "POST",
        "/v1/invoices",
        {"customer": customer_id, "subscription": outcome.subscription.stripe_id},
    )
    assert gateway.pay_invoice(renewal["id"]).status == InvoiceStatus.PAID
    for event_type in ("invoice.payment_succeeded", "invoice.paid"):
        assert store_and_handle(app, event_type, {"id": renewal["id"]}, clock) == Outcome.PROCESSED
    stripe_mirror.sync_subscription(
        session, gateway, outcome.subscription.stripe_id, now=clock.now()
    )
    session.commit()

    paid = session.scalars(select(Invoice).where(Invoice.status == InvoiceStatus.PAID)).all()
    assert len(paid) == 2, "the renewal is mirrored"
    receipts = [m for m in outbox.all(reader.email) if m.subject.startswith("Your receipt")]
    assert len(receipts) == 2, "each payment has its receipt"
    assert len(welcomes(outbox)) == 1, "a renewal is no welcome"


def test_a_start_at_the_trials_end_paid_with_another_card_is_not_welcomed_a_second_time(
    app: Flask,
    plans: dict[str, Plan],
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    clock: FixedClock,
    runner: FlaskCliRunner,
    outbox: Outbox,
) -> None:
    reader = reader_with_card(session, gateway, stripe, clock.now(), number=DECLINED_ON_CHARGE)
    trial = factories.TrialFactory(reader=reader, started_at=clock.now() - timedelta(days=10))
    payments.subscribe(session, gateway, reader, MONTHLY, now=clock.now())
    session.commit()
    assert len(welcomes(outbox, reader.email)) == 1, "welcomed when it was scheduled"

    clock.set(trial.ends_at)
    result = runner.invoke(args=["billing", "tick"])
    assert "1 scheduled subscription(s) started" in result.output, result.output
    assert only_subscription(session).status == SubscriptionStatus.INCOMPLETE
    save_card(session, gateway, stripe, reader, clock.now(), VISA)
    assert payments.retry_payment(session, gateway, reader, now=clock.now()) is None
    session.commit()

    assert only_subscription(session).status == SubscriptionStatus.ACTIVE
    assert len(welcomes(outbox)) == 1


def test_a_groups_first_payment_confirmed_with_3d_secure_welcomes_nobody(
    app: Flask,
    plans: dict[str, Plan],
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    clock: FixedClock,
    outbox: Outbox,
) -> None:
    admin: Reader = factories.reader(email="boss@ministry.example")
    session.commit()
    rules = groups.GroupRules.from_config(app.config)
    group = ministry_group(
        session,
        gateway,
        admin,
        by_invoice=False,
        rules=rules,
        now=clock.now(),
    )
    subscription = groups.subscribe_by_card(
        session,
        gateway,
        group,
        admin,
        stripe.create_card(THREE_D_SECURE),
        3,
        rules=rules,
        now=clock.now(),
    )
    session.commit()
    assert subscription.status == SubscriptionStatus.INCOMPLETE
    invoice = session.scalars(select(Invoice)).one()
    intent = gateway.invoice_payment_intent(invoice.stripe_id)
    assert intent is not None and intent.client_secret is not None
    stripe.authenticate_payment_intent(intent.id, intent.client_secret, success=True)

    assert store_and_handle(app, "invoice.payment_succeeded", {"id": invoice.stripe_id}, clock) == (
        Outcome.PROCESSED
    )

    assert only_subscription(session).status == SubscriptionStatus.ACTIVE
    assert welcomes(outbox) == [], "seats are bought by the organisation, not a subscriber"
