"""The Stripe commands: ``sync-plans``, ``reconcile``, and ``tick`` starting scheduled subscriptions."""

from __future__ import annotations

from datetime import timedelta

import pytest
from flask.testing import FlaskCliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.cli import DEMO_PLANS
from billing.clock import FixedClock
from billing.gateway import StripeGateway, is_ours
from billing.models import (
    Customer,
    Plan,
    ScheduledSubscription,
    Subscription,
    SubscriptionStatus,
    TrialStatus,
)
from billing.services import payments
from tests import factories
from tests.conftest import Outbox
from tests.payments_support import (
    DECLINED_ON_CHARGE,
    VISA,
    ledger,
    plans_on_sale,
    reader_with_card,
    save_card,
)
from tests.stripe_server import LocalstripeServer

pytestmark = [pytest.mark.usefixtures("stripe"), pytest.mark.wall_clock]


def invoke(runner: FlaskCliRunner, *args: str, exit_code: int = 0) -> str:
    result = runner.invoke(args=["billing", *args])
    assert result.exit_code == exit_code, result.output
    return result.output


def test_sync_plans_puts_the_plans_on_sale_once_and_a_new_amount_gets_a_new_price(
    runner: FlaskCliRunner, session: Session, gateway: StripeGateway
) -> None:
    assert "No active plans" in invoke(runner, "sync-plans")
    for code, name, kind, interval, amount in DEMO_PLANS:  # what seed-demo creates
        factories.PlanFactory(
            code=code, name=name, kind=kind, interval=interval, amount=amount, stripe_price_id=None
        )

    first = invoke(runner, "sync-plans")
    second = invoke(runner, "sync-plans")

    assert "Plans synced: 3 created, 0 updated, 0 unchanged." in first
    assert "Plans synced: 0 created, 0 updated, 3 unchanged." in second
    session.expire_all()
    plans = {p.code: p for p in session.scalars(select(Plan))}
    prices = {p.id: p for p in gateway.list_prices() if is_ours(p)}
    assert {p.stripe_price_id for p in plans.values()} == set(prices)
    monthly = prices[plans["individual-monthly"].stripe_price_id or ""]
    assert (monthly.amount, monthly.currency, monthly.interval) == (1200, "eur", "month")
    assert monthly.metadata["tollgate_plan"] == "individual-monthly"
    individual = {plans["individual-monthly"].stripe_product_id}
    assert individual == {plans["individual-yearly"].stripe_product_id}, "one product per kind"
    assert plans["group-seat-yearly"].stripe_product_id not in individual

    old_price = plans["individual-monthly"].stripe_price_id
    plans["individual-monthly"].amount = 1400
    plans["individual-yearly"].stripe_price_id = None  # as after restoring an old backup
    session.commit()
    third = invoke(runner, "sync-plans")

    assert "Plans synced: 1 created, 1 updated, 1 unchanged." in third
    session.expire_all()
    assert plans["individual-monthly"].stripe_price_id not in (None, old_price)
    assert plans["individual-yearly"].stripe_price_id in prices, "its price found again, not remade"
    assert len([p for p in gateway.list_prices() if is_ours(p)]) == 4
    assert gateway.retrieve_price(old_price or "").active, "subscriptions on it go on"


def test_reconcile_creates_what_the_mirror_missed_and_corrects_what_changed_behind_its_back(
    runner: FlaskCliRunner,
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    clock: FixedClock,
) -> None:
    plans = plans_on_sale(session, gateway)
    anna = reader_with_card(session, gateway, stripe, clock.now(), email="anna@example.org")
    ben = reader_with_card(session, gateway, stripe, clock.now(), email="ben@example.org")
    mirrored = payments.subscribe(session, gateway, anna, "individual-monthly", now=clock.now())
    session.commit()
    assert mirrored.subscription is not None and ben.customer is not None
    gateway.cancel_at_period_end(mirrored.subscription.stripe_id)
    price = plans["individual-yearly"].stripe_price_id or ""
    missed = gateway.create_subscription(
        ben.customer.stripe_id, price, metadata={"tollgate_reader_id": ben.public_id}
    )

    output = invoke(runner, "reconcile")

    assert "customers 2 (0 created, 0 updated, 2 unchanged, 0 missing)" in output
    assert "subscriptions 2 (1 created, 1 updated, 0 unchanged, 0 missing)" in output
    assert "invoices 2 (1 created, 0 updated, 1 unchanged, 0 missing)" in output
    assert "0 failed." in output
    assert "  subscriptions: 2/2" in output
    session.expire_all()
    corrected = session.get_one(Subscription, mirrored.subscription.id)
    assert corrected.cancel_at_period_end is True
    assert ledger(session, corrected) == [("created", 0, 1200), ("cancelled", 1200, 1200)]
    created = session.scalars(select(Subscription).where(Subscription.stripe_id == missed.id)).one()
    assert (created.reader_id, created.status) == (ben.id, SubscriptionStatus.ACTIVE)

    again = invoke(runner, "reconcile")
    assert "subscriptions 2 (0 created, 0 updated, 2 unchanged, 0 missing)" in again
    assert "invoices 2 (0 created, 0 updated, 2 unchanged, 0 missing)" in again


def test_reconcile_leaves_the_demo_history_alone_instead_of_marking_it_deleted(
    runner: FlaskCliRunner, session: Session, clock: FixedClock
) -> None:
    past = clock.now() - timedelta(days=200)
    demo_customer = factories.CustomerFactory(stripe_id="demo_cus_00001", created_at=past)
    demo_sub = factories.SubscriptionFactory(
        customer=demo_customer, stripe_id="demo_sub_00002", status=SubscriptionStatus.ACTIVE
    )
    gone = factories.CustomerFactory(stripe_id="cus_gone_from_stripe")
    session.commit()

    output = invoke(runner, "reconcile")

    assert "customers 1 (0 created, 1 updated, 0 unchanged, 0 missing)" in output
    assert "subscriptions 0 " in output
    assert "Left alone: 1 customers and 1 subscriptions of the demo history" in output
    session.expire_all()
    assert session.get_one(Customer, demo_customer.id).deleted_at is None
    assert session.get_one(Subscription, demo_sub.id).status == SubscriptionStatus.ACTIVE
    assert session.get_one(Customer, gone.id).deleted_at is not None, "a real one gone is marked"


def test_tick_starts_a_due_scheduled_subscription_once_and_retries_one_that_failed(
    runner: FlaskCliRunner,
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    clock: FixedClock,
) -> None:
    plans_on_sale(session, gateway)
    reader = reader_with_card(session, gateway, stripe, clock.now())
    trial = factories.TrialFactory(reader=reader, started_at=clock.now() - timedelta(days=14))
    customer = session.scalars(select(Customer)).one()
    real_id = customer.stripe_id
    session.add(
        ScheduledSubscription(
            reader_id=reader.id,
            customer_id=customer.id,
            plan_id=session.scalars(select(Plan.id).where(Plan.code == "individual-monthly")).one(),
            starts_at=trial.ends_at,
            created_at=trial.started_at,
        )
    )
    customer.stripe_id = "cus_gone"  # Stripe will refuse it
    session.commit()

    failing = runner.invoke(args=["billing", "tick"])

    assert "0 scheduled subscription(s) started (1 failed, retried next tick)" in failing.output
    session.expire_all()
    scheduled = session.scalars(select(ScheduledSubscription)).one()
    assert scheduled.attempts == 1 and scheduled.last_error
    assert scheduled.started_at is None
    assert trial.status == TrialStatus.ACTIVE, "no 'trial ended' while its start is pending"

    customer.stripe_id = real_id
    session.commit()
    started = invoke(runner, "tick")
    again = invoke(runner, "tick")

    assert "1 scheduled subscription(s) started," in started
    assert "0 scheduled subscription(s) started," in again
    assert len(gateway.list_subscriptions(customer_id=real_id)) == 1
    session.expire_all()
    assert (scheduled.started_at, scheduled.last_error) == (clock.now(), None)
    assert trial.status == TrialStatus.CONVERTED


def test_a_scheduled_start_whose_card_is_declined_mails_the_reader(
    runner: FlaskCliRunner,
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    clock: FixedClock,
    outbox: Outbox,
) -> None:
    plans_on_sale(session, gateway)
    reader = reader_with_card(session, gateway, stripe, clock.now(), email="anna@example.org")
    trial = factories.TrialFactory(reader=reader, started_at=clock.now() - timedelta(days=1))
    payments.subscribe(session, gateway, reader, "individual-yearly", now=clock.now())
    session.commit()
    save_card(session, gateway, stripe, reader, clock.now(), DECLINED_ON_CHARGE)
    clock.set(trial.ends_at)

    assert "1 scheduled subscription(s) started" in invoke(runner, "tick")

    session.expire_all()
    subscription = session.scalars(select(Subscription)).one()
    assert subscription.status == SubscriptionStatus.INCOMPLETE
    [message] = [m for m in outbox.all("anna@example.org") if "payment" in m.subject]
    assert message.subject == "Your payment failed"
    assert "€120.00" in message.body and "/account/card" in message.body

    save_card(session, gateway, stripe, reader, clock.now(), VISA)
    assert payments.retry_payment(session, gateway, reader, now=clock.now()) is None
    session.commit()
    assert ledger(session) == [("converted", 0, 1000)]
