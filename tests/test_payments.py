"""The payments service against a real localstripe: subscribe, manage, fail, recover, refund."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskCliRunner
from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.clock import FixedClock
from billing.errors import ValidationFailed
from billing.gateway import StripeGateway
from billing.models import (
    AuditLog,
    Invoice,
    InvoiceStatus,
    Plan,
    Reader,
    Refund,
    ScheduledSubscription,
    SubscriptionStatus,
    TrialStatus,
)
from billing.services import entitlements, payments, stripe_mirror
from billing.services.entitlements import Reason
from billing.services.trials import EmailNotVerified
from tests import factories
from tests.conftest import Outbox
from tests.payments_support import (
    DECLINED_ON_ATTACH,
    DECLINED_ON_CHARGE,
    MASTERCARD,
    THREE_D_SECURE_THEN_DECLINED,
    VISA,
    ledger,
    only_subscription,
    reader_with_card,
    save_card,
    store_and_handle,
)
from tests.stripe_server import LocalstripeServer
from webhooks.process import Outcome

pytestmark = [pytest.mark.usefixtures("stripe"), pytest.mark.wall_clock]

MONTHLY, YEARLY = "individual-monthly", "individual-yearly"
GRACE = timedelta(days=7)


@pytest.fixture
def reader(
    plans: dict[str, Plan],
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    clock: FixedClock,
) -> Reader:
    """A verified reader with a Visa card saved, no trial, no subscription."""
    return reader_with_card(session, gateway, stripe, clock.now(), email="anna@example.org")


def decide(reader: Reader, session: Session, clock: FixedClock) -> entitlements.Decision:
    """The entitlement decision for ``reader`` now, from the database as it stands."""
    session.expire_all()
    return entitlements.decide(reader, clock.now(), past_due_grace=GRACE)


def test_subscribing_without_a_trial_starts_at_once_and_mirrors_the_paid_invoice(
    reader: Reader, session: Session, gateway: StripeGateway, clock: FixedClock
) -> None:
    now = clock.now()

    outcome = payments.subscribe(session, gateway, reader, MONTHLY, now=now)
    session.commit()

    assert outcome.scheduled is None and outcome.action_client_secret is None
    assert (outcome.first_charge_at, outcome.amount, outcome.currency) == (now, 1200, "eur")
    subscription = only_subscription(session)
    assert subscription is outcome.subscription
    assert (subscription.status, subscription.plan.code) == (SubscriptionStatus.ACTIVE, MONTHLY)
    assert subscription.reader_id == reader.id
    invoice = session.scalars(select(Invoice)).one()
    assert (invoice.status, invoice.currency, invoice.subscription_id) == (
        InvoiceStatus.PAID,
        "eur",
        subscription.id,
    )
    assert (invoice.subtotal, invoice.tax, invoice.total, invoice.amount_paid) == (
        1200,
        0,
        1200,
        1200,
    )
    assert ledger(session) == [("created", 0, 1200)]
    decision = decide(reader, session, clock)
    assert (decision.reason, decision.until) == (
        Reason.SUBSCRIPTION,
        subscription.current_period_end,
    )
    summary = payments.overview(session, reader, now=now)
    assert (summary.status, summary.next_charge_at, summary.next_amount) == (
        "active",
        subscription.current_period_end,
        1200,
    )
    assert (summary.card_brand, summary.card_last4, summary.payment_problem) == (
        "visa",
        "4242",
        False,
    )
    actions = session.scalars(select(AuditLog.action).order_by(AuditLog.id)).all()
    assert actions == ["subscription.card_saved", "subscription.created"]


def test_subscribing_is_refused_without_verified_email_card_or_known_plan_and_when_running(
    plans: dict[str, Plan],
    reader: Reader,
    session: Session,
    gateway: StripeGateway,
    clock: FixedClock,
) -> None:
    now = clock.now()
    unverified = factories.reader(email_verified_at=None)
    without_card = factories.reader()

    with pytest.raises(EmailNotVerified):
        payments.subscribe(session, gateway, unverified, MONTHLY, now=now)
    with pytest.raises(payments.CardRequired) as no_card:
        payments.subscribe(session, gateway, without_card, MONTHLY, now=now)
    assert no_card.value.field == "card"
    with pytest.raises(ValidationFailed) as unknown:
        payments.subscribe(session, gateway, reader, "group-seat-yearly", now=now)
    assert unknown.value.field == "plan"
    payments.subscribe(session, gateway, reader, MONTHLY, now=now)
    session.commit()
    with pytest.raises(payments.AlreadySubscribed):
        payments.subscribe(session, gateway, reader, YEARLY, now=now)
    assert [p.code for p in payments.reader_plans(session)] == [MONTHLY, YEARLY]


def test_subscribing_during_the_trial_charges_nothing_until_tick_starts_it_once_at_the_trial_end(
    reader: Reader,
    session: Session,
    gateway: StripeGateway,
    clock: FixedClock,
    runner: FlaskCliRunner,
    outbox: Outbox,
) -> None:
    trial = factories.TrialFactory(reader=reader, started_at=clock.now() - timedelta(days=10))
    customer = reader.customer
    assert customer is not None

    outcome = payments.subscribe(session, gateway, reader, YEARLY, now=clock.now())
    session.commit()

    assert outcome.subscription is None and outcome.scheduled is not None
    assert (outcome.first_charge_at, outcome.amount) == (trial.ends_at, 12000)
    assert gateway.list_subscriptions(customer_id=customer.stripe_id) == []
    assert gateway.list_invoices(customer_id=customer.stripe_id) == []
    summary = payments.overview(session, reader, now=clock.now())
    assert (summary.status, summary.next_charge_at, summary.next_amount) == (
        "scheduled",
        trial.ends_at,
        12000,
    )
    assert decide(reader, session, clock).reason == Reason.TRIAL
    early = runner.invoke(args=["billing", "tick"])
    assert "0 scheduled subscription(s) started" in early.output, early.output

    clock.set(trial.ends_at)
    first = runner.invoke(args=["billing", "tick"])
    again = runner.invoke(args=["billing", "tick"])

    assert "1 scheduled subscription(s) started" in first.output, first.output
    assert "0 scheduled subscription(s) started" in again.output, again.output
    assert len(gateway.list_subscriptions(customer_id=customer.stripe_id)) == 1
    subscription = only_subscription(session)
    assert (subscription.status, subscription.plan.code) == (SubscriptionStatus.ACTIVE, YEARLY)
    session.refresh(trial)
    assert (trial.status, trial.converted_at) == (TrialStatus.CONVERTED, trial.ends_at)
    scheduled = session.scalars(select(ScheduledSubscription)).one()
    assert (scheduled.started_at, scheduled.subscription_id) == (trial.ends_at, subscription.id)
    assert ledger(session) == [("converted", 0, 1000)]
    assert session.scalars(select(Invoice.amount_paid)).all() == [12000]
    assert decide(reader, session, clock).reason == Reason.SUBSCRIPTION
    subjects = [m.subject for m in outbox.all(reader.email)]
    assert not [s for s in subjects if "trial" in s.lower()], "no reminder, no 'trial ended' mail"


def test_a_scheduled_start_can_change_plan_or_be_called_off_before_the_trial_ends(
    reader: Reader,
    session: Session,
    gateway: StripeGateway,
    clock: FixedClock,
    runner: FlaskCliRunner,
) -> None:
    trial = factories.TrialFactory(reader=reader, started_at=clock.now())
    payments.subscribe(session, gateway, reader, MONTHLY, now=clock.now())

    switched = payments.switch_plan(session, gateway, reader, YEARLY, now=clock.now())
    session.commit()
    assert isinstance(switched, ScheduledSubscription) and switched.plan.code == YEARLY

    payments.cancel_scheduled(session, reader, now=clock.now())
    session.commit()
    assert payments.overview(session, reader, now=clock.now()).status is None
    with pytest.raises(payments.NothingToManage):
        payments.cancel_scheduled(session, reader, now=clock.now())

    clock.set(trial.ends_at)
    result = runner.invoke(args=["billing", "tick"])
    assert "0 scheduled subscription(s) started" in result.output
    assert "1 trial(s) ended" in result.output
    assert reader.customer is not None
    assert gateway.list_subscriptions(customer_id=reader.customer.stripe_id) == []


def test_cancelling_at_period_end_keeps_access_until_then_and_resuming_takes_it_back(
    reader: Reader, session: Session, gateway: StripeGateway, clock: FixedClock
) -> None:
    payments.subscribe(session, gateway, reader, MONTHLY, now=clock.now())

    cancelled = payments.cancel_at_period_end(session, gateway, reader, now=clock.now())
    session.commit()

    assert (cancelled.status, cancelled.cancel_at_period_end) == (SubscriptionStatus.ACTIVE, True)
    decision = decide(reader, session, clock)
    assert (decision.reason, decision.until) == (Reason.GRACE_PERIOD, cancelled.current_period_end)
    summary = payments.overview(session, reader, now=clock.now())
    assert (summary.cancel_at_period_end, summary.access_until, summary.next_charge_at) == (
        True,
        cancelled.current_period_end,
        None,
    )
    assert payments.cancel_at_period_end(session, gateway, reader, now=clock.now()) is cancelled

    resumed = payments.resume(session, gateway, reader, now=clock.now())
    session.commit()

    assert resumed.cancel_at_period_end is False
    assert decide(reader, session, clock).reason == Reason.SUBSCRIPTION
    assert ledger(session) == [
        ("created", 0, 1200),
        ("cancelled", 1200, 1200),
        ("reactivated", 1200, 1200),
    ]


def test_switching_monthly_to_yearly_and_back_records_a_downgrade_and_an_upgrade_of_mrr(
    reader: Reader, session: Session, gateway: StripeGateway, clock: FixedClock
) -> None:
    payments.subscribe(session, gateway, reader, MONTHLY, now=clock.now())

    yearly = payments.switch_plan(session, gateway, reader, YEARLY, now=clock.now())
    session.commit()

    assert not isinstance(yearly, ScheduledSubscription)
    assert (yearly.status, yearly.plan.code) == (SubscriptionStatus.ACTIVE, YEARLY)
    assert payments.switch_plan(session, gateway, reader, YEARLY, now=clock.now()) is yearly
    payments.switch_plan(session, gateway, reader, MONTHLY, now=clock.now())
    session.commit()

    assert ledger(session) == [
        ("created", 0, 1200),
        ("downgraded", 1200, 1000),
        ("upgraded", 1000, 1200),
    ]
    deltas = session.scalars(select(Invoice.total).order_by(Invoice.created_at, Invoice.id)).all()
    assert deltas[:2] == [1200, 12000 - 1200], "localstripe credits the unused month"
    assert only_subscription(session).plan.code == MONTHLY


def test_a_new_card_is_saved_through_a_setup_intent_and_refused_cards_say_why(
    reader: Reader,
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    clock: FixedClock,
) -> None:
    intent = payments.card_setup(session, gateway, reader, now=clock.now())
    stripe.confirm_setup_intent(intent.id, stripe.create_card(MASTERCARD))
    method = gateway.retrieve_setup_intent(intent.id).payment_method_id
    assert method is not None

    card = payments.save_card(session, gateway, reader, method, now=clock.now())
    session.commit()

    assert card.last4 == "4444"  # localstripe names every card's brand "visa"
    summary = payments.overview(session, reader, now=clock.now())
    assert (summary.card_brand, summary.card_last4) == (card.brand, "4444")
    assert reader.customer is not None
    assert gateway.default_card(reader.customer.stripe_id) == card
    with pytest.raises(payments.PaymentFailed) as declined:
        payments.save_card(
            session, gateway, reader, stripe.create_card(DECLINED_ON_ATTACH), now=clock.now()
        )
    assert declined.value.field == "card"
    with pytest.raises(ValidationFailed) as unknown:
        payments.save_card(session, gateway, reader, "pm_doesnotexist", now=clock.now())
    assert unknown.value.field == "card"
    with pytest.raises(ValidationFailed):
        payments.save_card(session, gateway, reader, "  ", now=clock.now())


def test_cancelling_now_ends_the_subscription_and_the_access(
    reader: Reader, session: Session, gateway: StripeGateway, clock: FixedClock
) -> None:
    payments.subscribe(session, gateway, reader, MONTHLY, now=clock.now())

    ended = payments.cancel_now(session, gateway, reader, now=clock.now())
    session.commit()

    assert ended.status == SubscriptionStatus.CANCELED and ended.ended_at is not None
    assert decide(reader, session, clock).reason == Reason.SUBSCRIPTION_ENDED
    assert ledger(session) == [("created", 0, 1200), ("ended", 1200, 0)]
    with pytest.raises(payments.NothingToManage):
        payments.cancel_now(session, gateway, reader, now=clock.now())
    summary = payments.overview(session, reader, now=clock.now())
    assert (summary.status, summary.payment_problem, summary.access_until) == (
        "canceled",
        False,
        None,
    )


def test_a_declined_first_payment_leaves_it_incomplete_until_another_card_pays_it(
    plans: dict[str, Plan],
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    clock: FixedClock,
) -> None:
    reader = reader_with_card(session, gateway, stripe, clock.now(), number=DECLINED_ON_CHARGE)

    with pytest.raises(payments.PaymentFailed) as failed:
        payments.subscribe(session, gateway, reader, MONTHLY, now=clock.now())
    session.commit()  # as the page does: what Stripe did stays mirrored

    assert failed.value.field == "card" and "declined" in failed.value.message
    subscription = only_subscription(session)
    assert subscription.status == SubscriptionStatus.INCOMPLETE
    assert session.scalars(select(Invoice.status)).all() == [InvoiceStatus.OPEN]
    assert not decide(reader, session, clock).granted
    assert payments.overview(session, reader, now=clock.now()).payment_problem
    assert ledger(session) == [], "nothing was paid yet"
    with pytest.raises(payments.PaymentFailed):
        payments.retry_payment(session, gateway, reader, now=clock.now())

    save_card(session, gateway, stripe, reader, clock.now(), VISA)
    assert payments.retry_payment(session, gateway, reader, now=clock.now()) is None
    session.commit()

    assert only_subscription(session).status == SubscriptionStatus.ACTIVE
    assert session.scalars(select(Invoice.status)).all() == [InvoiceStatus.PAID]
    assert ledger(session) == [("created", 0, 1200)]
    assert decide(reader, session, clock).reason == Reason.SUBSCRIPTION


def test_a_declined_payment_later_makes_it_past_due_mails_the_reader_and_a_new_card_recovers_it(
    app: Flask,
    reader: Reader,
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    clock: FixedClock,
    outbox: Outbox,
) -> None:
    payments.subscribe(session, gateway, reader, MONTHLY, now=clock.now())
    save_card(session, gateway, stripe, reader, clock.now(), DECLINED_ON_CHARGE)

    with pytest.raises(payments.PaymentFailed):
        payments.switch_plan(session, gateway, reader, YEARLY, now=clock.now())
    session.commit()

    subscription = only_subscription(session)
    assert subscription.status == SubscriptionStatus.PAST_DUE
    assert subscription.past_due_since == clock.now()

    def failure_mails() -> list[Any]:
        return [m for m in outbox.all(reader.email) if m.subject == "Your payment failed"]

    [message] = failure_mails()
    assert "http://localhost/account/card" in message.body
    assert "€108.00" in message.body and "keep reading" in message.body
    failed_invoice = session.scalars(
        select(Invoice).where(Invoice.status == InvoiceStatus.OPEN)
    ).one()
    outcome = store_and_handle(
        app, "invoice.payment_failed", {"id": failed_invoice.stripe_id}, clock
    )
    assert outcome == Outcome.PROCESSED
    assert len(failure_mails()) == 1, "one mail per failure, however it is reported"
    decision = decide(reader, session, clock)
    assert (decision.reason, decision.until) == (Reason.PAST_DUE_GRACE, clock.now() + GRACE)

    clock.advance(GRACE + timedelta(hours=1))
    assert decide(reader, session, clock).reason == Reason.PAYMENT_FAILED

    save_card(session, gateway, stripe, reader, clock.now(), VISA)
    assert payments.retry_payment(session, gateway, reader, now=clock.now()) is None
    session.commit()

    recovered = only_subscription(session)
    assert (recovered.status, recovered.past_due_since) == (SubscriptionStatus.ACTIVE, None)
    assert decide(reader, session, clock).reason == Reason.SUBSCRIPTION
    assert ledger(session) == [
        ("created", 0, 1200),
        ("downgraded", 1200, 1000),
        ("past_due", 1000, 1000),
        ("recovered", 1000, 1000),
    ]
    failed = {"id": failed_invoice.stripe_id}
    assert store_and_handle(app, "invoice.payment_failed", failed, clock) == Outcome.PROCESSED
    assert len(failure_mails()) == 1, "a failure already fixed mails nobody"


def test_a_payment_needing_3d_secure_hands_the_client_secret_to_the_page(
    plans: dict[str, Plan],
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    clock: FixedClock,
) -> None:
    reader = reader_with_card(
        session, gateway, stripe, clock.now(), number=THREE_D_SECURE_THEN_DECLINED
    )

    outcome = payments.subscribe(session, gateway, reader, MONTHLY, now=clock.now())
    session.commit()

    assert outcome.action_client_secret is not None
    assert outcome.subscription is not None
    assert outcome.subscription.status == SubscriptionStatus.INCOMPLETE
    invoice = session.scalars(select(Invoice)).one()
    intent = gateway.invoice_payment_intent(invoice.stripe_id)
    assert intent is not None and intent.client_secret == outcome.action_client_secret
    stripe.authenticate_payment_intent(intent.id, outcome.action_client_secret, success=False)

    stripe_mirror.sync_subscription(
        session, gateway, outcome.subscription.stripe_id, now=clock.now()
    )
    session.commit()
    assert only_subscription(session).status == SubscriptionStatus.CANCELED
    assert ledger(session) == [], "it never started"


def test_refunds_of_a_charge_are_mirrored_once_with_the_refunded_total(
    reader: Reader, session: Session, gateway: StripeGateway, clock: FixedClock
) -> None:
    payments.subscribe(session, gateway, reader, MONTHLY, now=clock.now())
    session.commit()
    invoice = session.scalars(select(Invoice)).one()
    first = gateway.refund_invoice(invoice.stripe_id, amount=300, reason="requested_by_customer")
    assert first.charge_id is not None

    refunds = stripe_mirror.sync_charge_refunds(session, gateway, first.charge_id, now=clock.now())
    stripe_mirror.sync_charge_refunds(session, gateway, first.charge_id, now=clock.now())
    session.commit()

    assert [(r.stripe_id, r.amount, r.reason) for r in refunds] == [
        (first.id, 300, "requested_by_customer")
    ]
    session.refresh(invoice)
    assert (invoice.amount_paid, invoice.amount_refunded) == (1200, 300)
    assert ledger(session) == [("created", 0, 1200), ("refunded", 1200, 1200)]

    gateway.refund_invoice(invoice.stripe_id)
    stripe_mirror.sync_charge_refunds(session, gateway, first.charge_id, now=clock.now())
    session.commit()

    session.refresh(invoice)
    assert invoice.amount_refunded == 1200
    assert sorted(session.scalars(select(Refund.amount))) == [300, 900]
    assert [kind for kind, _, _ in ledger(session)].count("refunded") == 2


def test_syncing_the_same_subscription_again_changes_nothing(
    reader: Reader, session: Session, gateway: StripeGateway, clock: FixedClock
) -> None:
    outcome = payments.subscribe(session, gateway, reader, MONTHLY, now=clock.now())
    session.commit()
    assert outcome.subscription is not None
    stripe_id = outcome.subscription.stripe_id

    changes = [
        stripe_mirror.resync(session, gateway, "subscription", stripe_id, now=clock.now())
        for _ in range(5)
    ]
    session.commit()

    assert changes == [stripe_mirror.Change.UNCHANGED] * 5
    assert ledger(session) == [("created", 0, 1200)]


def test_the_invoice_list_is_the_readers_own_newest_first_by_page(
    reader: Reader, session: Session, gateway: StripeGateway, clock: FixedClock
) -> None:
    payments.subscribe(session, gateway, reader, MONTHLY, now=clock.now())
    payments.switch_plan(session, gateway, reader, YEARLY, now=clock.now())
    session.commit()
    someone_else = factories.reader()

    first_page, total = payments.invoices_for(session, reader, page=1, per_page=1)
    second_page, _ = payments.invoices_for(session, reader, page=2, per_page=1)

    assert total == 2
    assert [i.total for i in first_page + second_page] == [10800, 1200]
    assert payments.invoices_for(session, someone_else, page=1) == ([], 0)
