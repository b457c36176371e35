"""The Stripe webhook handlers: real deliveries from localstripe, and signed events of the types
localstripe never sends, about real localstripe objects (the handlers re-fetch them)."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from billing import db
from billing.clock import FixedClock
from billing.gateway import StripeDisputeData, StripeGateway
from billing.leases import RetryPolicy
from billing.models import (
    Customer,
    Dispute,
    Invoice,
    InvoiceStatus,
    Plan,
    Reader,
    Refund,
    Subscription,
    SubscriptionEvent,
    SubscriptionStatus,
    WebhookEvent,
    WebhookEventStatus,
)
from billing.services import payments
from billing.worker import Worker
from tests import factories
from tests.browser import LiveServer
from tests.conftest import Outbox
from tests.payments_support import (
    DECLINED_ON_CHARGE,
    WEBHOOK_SECRET,
    deliver_and_handle,
    event,
    forget_the_mirror,
    ledger,
    plans_on_sale,
    post_event,
    reader_with_card,
    wait_for,
)
from tests.stripe_server import LocalstripeServer
from webhooks import store
from webhooks.process import Outcome, process
from webhooks.registry import HANDLERS, handler_for

PROCESSED = WebhookEventStatus.PROCESSED

pytestmark = [pytest.mark.usefixtures("stripe"), pytest.mark.wall_clock]

MONTHLY = "individual-monthly"
REQUIRED_TYPES = {
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.resumed",
    "customer.subscription.trial_will_end",
    "invoice.created",
    "invoice.finalized",
    "invoice.paid",
    "invoice.payment_succeeded",
    "invoice.payment_failed",
    "invoice.payment_action_required",
    "invoice.voided",
    "invoice.marked_uncollectible",
    "charge.refunded",
    "charge.dispute.created",
    "charge.dispute.closed",
    "customer.updated",
    "customer.deleted",
}


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    """The test app, verifying webhooks with the secret the tests sign (and register) with."""
    app_config["STRIPE_WEBHOOK_SECRETS"] = [WEBHOOK_SECRET]
    return app_config


@pytest.fixture
def reader(
    plans: dict[str, Plan],
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    clock: FixedClock,
) -> Reader:
    """A verified reader whose Stripe customer (tagged with their public id) has a Visa card."""
    return reader_with_card(session, gateway, stripe, clock.now(), email="anna@example.org")


def subscribe_behind_our_back(gateway: StripeGateway, reader: Reader, plan: Plan) -> str:
    """A subscription of ours created on Stripe directly (as by support in the Dashboard): the
    mirror learns of it from webhooks only. Its id."""
    assert reader.customer is not None and plan.stripe_price_id is not None
    created = gateway.create_subscription(
        reader.customer.stripe_id,
        plan.stripe_price_id,
        metadata={"tollgate_reader_id": reader.public_id, "tollgate_plan": plan.code},
    )
    return created.id


def stored_status(session: Session, stripe_event: dict[str, Any]) -> WebhookEventStatus:
    session.expire_all()
    row = session.scalars(
        select(WebhookEvent).where(WebhookEvent.stripe_event_id == stripe_event["id"])
    ).one()
    return row.status


def mirror_state(session: Session) -> dict[str, Any]:
    """Everything the mirror holds about money and access, without row ids and random ids."""
    session.expire_all()
    skip = {"id", "public_id", "customer_id", "subscription_id", "invoice_id", "stripe_event_id"}
    skip |= {"last_stripe_event_id"}

    def rows(model: type[Any]) -> list[dict[str, Any]]:
        columns = [c.key for c in model.__table__.columns if c.key not in skip]
        found = session.scalars(select(model).order_by(model.id)).all()
        return [{c: getattr(row, c) for c in columns} for row in found]

    return {
        "customers": rows(Customer),
        "subscriptions": rows(Subscription),
        "invoices": rows(Invoice),
        "ledger": rows(SubscriptionEvent),
    }


def test_every_event_type_we_rely_on_has_a_handler_with_a_reason() -> None:
    handler_for("invoice.paid")  # fills the table

    assert REQUIRED_TYPES <= set(HANDLERS)
    assert all(registration.why.strip() for registration in HANDLERS.values())


@pytest.fixture
def background_worker(app: Flask) -> Iterator[Worker]:
    """A worker handling stored events in a thread, as ``flask billing worker`` beside the app."""
    app.config["WORKER_POLL_INTERVAL"] = 0.05
    worker = Worker(app, name="background")
    stop = threading.Event()
    thread = threading.Thread(target=worker.run_forever, args=(stop,), daemon=True)
    thread.start()
    yield worker
    stop.set()
    thread.join(timeout=30)


def test_localstripe_deliveries_mirror_a_subscription_made_behind_our_back_until_it_ends(
    live_server: LiveServer,
    background_worker: Worker,
    stripe: LocalstripeServer,
    plans: dict[str, Plan],
    reader: Reader,
    session: Session,
    gateway: StripeGateway,
) -> None:
    stripe.register_webhook(live_server.url + "/webhooks/stripe", WEBHOOK_SECRET)

    subscription_id = subscribe_behind_our_back(gateway, reader, plans[MONTHLY])

    def mirrored() -> Any:
        return (
            session.scalars(
                select(Invoice).where(Invoice.status == InvoiceStatus.PAID)
            ).one_or_none()
            and session.scalars(select(Subscription)).one_or_none()
        )

    subscription = wait_for(mirrored, session)
    assert subscription, "the deliveries of subscription.created and the invoice arrived"
    assert (subscription.stripe_id, subscription.status) == (
        subscription_id,
        SubscriptionStatus.ACTIVE,
    )
    assert subscription.reader_id == reader.id

    gateway.cancel_now(subscription_id)

    def ended() -> bool:
        return session.get_one(Subscription, subscription.id).status == SubscriptionStatus.CANCELED

    assert wait_for(ended, session)
    assert ledger(session) == [("created", 0, 1200), ("ended", 1200, 0)]
    statuses = set(session.scalars(select(WebhookEvent.status)))
    assert WebhookEventStatus.FAILED not in statuses


def test_a_failed_renewal_reported_by_stripe_makes_it_past_due_and_mails_the_reader_once(
    client: FlaskClient,
    stripe: LocalstripeServer,
    plans: dict[str, Plan],
    reader: Reader,
    session: Session,
    gateway: StripeGateway,
    clock: FixedClock,
    outbox: Outbox,
) -> None:
    now = clock.now()
    subscription_id = subscribe_behind_our_back(gateway, reader, plans[MONTHLY])
    created = event("customer.subscription.created", {"id": subscription_id}, created=now)
    assert deliver_and_handle(client, created, now=now) == PROCESSED
    assert reader.customer is not None
    gateway.attach_default_payment_method(
        reader.customer.stripe_id, stripe.create_card(DECLINED_ON_CHARGE)
    )
    yearly = plans["individual-yearly"].stripe_price_id
    assert yearly is not None
    failing = gateway.change_price(subscription_id, yearly).latest_invoice_id
    assert failing is not None

    for event_type, stripe_object in (
        ("invoice.payment_failed", {"id": failing}),
        ("customer.subscription.updated", {"id": subscription_id}),
        ("invoice.payment_failed", {"id": failing}),
    ):
        assert deliver_and_handle(
            client, event(event_type, stripe_object, created=now), now=now
        ) == (PROCESSED)

    subscription = session.scalars(select(Subscription)).one()
    assert (subscription.status, subscription.past_due_since) == (SubscriptionStatus.PAST_DUE, now)
    [message] = outbox.all(reader.email)
    assert message.subject == "Your payment failed"
    assert "http://localhost/account/card" in message.body
    assert "€108.00" in message.body, "the yearly price less the unused month"
    assert "keep reading" in message.body
    assert ledger(session) == [
        ("created", 0, 1200),
        ("downgraded", 1200, 1000),
        ("past_due", 1000, 1000),
    ]


def test_signed_events_of_types_localstripe_never_sends_bring_the_mirror_to_the_truth(
    client: FlaskClient,
    plans: dict[str, Plan],
    reader: Reader,
    session: Session,
    gateway: StripeGateway,
    clock: FixedClock,
) -> None:
    now = clock.now()
    subscription_id = subscribe_behind_our_back(gateway, reader, plans[MONTHLY])
    stripe_subscription = gateway.cancel_at_period_end(subscription_id)
    invoice_id = stripe_subscription.latest_invoice_id
    assert invoice_id is not None
    refund = gateway.refund_invoice(invoice_id, amount=500)
    assert refund.charge_id is not None

    updated = event("customer.subscription.updated", {"id": subscription_id}, created=now)
    paid = event("invoice.paid", {"id": invoice_id, "object": "invoice"}, created=now)
    refunded = event("charge.refunded", {"id": refund.charge_id}, created=now)
    trial_ends = event("customer.subscription.trial_will_end", {"id": subscription_id}, created=now)
    for stripe_event in (updated, paid, refunded, trial_ends):
        assert deliver_and_handle(client, stripe_event, now=now) == PROCESSED

    subscription = session.scalars(select(Subscription)).one()
    assert (subscription.status, subscription.cancel_at_period_end) == (
        SubscriptionStatus.ACTIVE,
        True,
    )
    invoice = session.scalars(select(Invoice)).one()
    assert (invoice.status, invoice.amount_paid, invoice.amount_refunded) == (
        InvoiceStatus.PAID,
        1200,
        500,
    )
    assert session.scalars(select(Refund.amount)).all() == [500]
    assert ledger(session) == [
        ("created", 0, 1200),
        ("cancelled", 1200, 1200),
        ("refunded", 1200, 1200),
    ]
    again = event("charge.refunded", {"id": refund.charge_id}, created=now)
    assert deliver_and_handle(client, again, now=now) == PROCESSED
    assert post_event(client, updated, now=now).get_json()["outcome"] == "duplicate"
    Worker(client.application).run_once()
    assert len(ledger(session)) == 3, "the same facts delivered again change nothing"


def test_any_order_of_a_subscriptions_lifecycle_events_ends_in_the_same_mirror_and_ledger(
    client: FlaskClient,
    plans: dict[str, Plan],
    reader: Reader,
    session: Session,
    gateway: StripeGateway,
    clock: FixedClock,
) -> None:
    now = clock.now()
    subscription_id = subscribe_behind_our_back(gateway, reader, plans[MONTHLY])
    invoice_id = gateway.cancel_at_period_end(subscription_id).latest_invoice_id
    gateway.cancel_now(subscription_id)
    lifecycle = [
        ("customer.subscription.created", {"id": subscription_id, "object": "subscription"}),
        ("invoice.payment_succeeded", {"id": invoice_id, "object": "invoice"}),
        ("customer.subscription.updated", {"id": subscription_id, "object": "subscription"}),
        ("customer.subscription.deleted", {"id": subscription_id, "object": "subscription"}),
    ]

    outcomes: list[dict[str, Any]] = []
    for position, order in enumerate(itertools.permutations(lifecycle)):
        forget_the_mirror(session)
        deliveries = order + order if position == 0 else order  # the first: every fact twice
        for event_type, stripe_object in deliveries:
            stripe_event = event(event_type, stripe_object, created=now)
            assert deliver_and_handle(client, stripe_event, now=now) == PROCESSED, order
        outcomes.append(mirror_state(session))

    assert len(outcomes) == 24
    assert all(outcome == outcomes[0] for outcome in outcomes)
    final = outcomes[0]
    assert [s["status"] for s in final["subscriptions"]] == [SubscriptionStatus.CANCELED]
    assert [(i["status"], i["amount_paid"]) for i in final["invoices"]] == [
        (InvoiceStatus.PAID, 1200)
    ]
    assert [(e["kind"], e["mrr_before"], e["mrr_after"]) for e in final["ledger"]] == [
        ("created", 0, 1200),
        ("ended", 1200, 0),
    ]
    assert [c["reader_id"] for c in final["customers"]] == [reader.id], "linked from metadata"


def test_events_about_objects_that_are_not_ours_are_acknowledged_and_ignored(
    client: FlaskClient,
    stripe: LocalstripeServer,
    plans: dict[str, Plan],
    session: Session,
    clock: FixedClock,
) -> None:
    now = clock.now()
    shop = stripe.request("POST", "/v1/customers", {"email": "shop@example.org"})
    card = stripe.create_card()
    stripe.request("POST", f"/v1/payment_methods/{card}/attach", {"customer": shop["id"]})
    stripe.request(
        "POST",
        f"/v1/customers/{shop['id']}",
        {"invoice_settings": {"default_payment_method": card}},
    )
    foreign_plan = stripe.request(
        "POST",
        "/v1/plans",
        {"amount": 500, "currency": "eur", "interval": "month", "product": {"name": "Shop"}},
    )
    foreign = stripe.request(
        "POST",
        "/v1/subscriptions",
        {"customer": shop["id"], "items": {"0": {"plan": foreign_plan["id"]}}},
    )

    events = [
        event("customer.updated", {"id": shop["id"]}, created=now),
        event("customer.subscription.created", {"id": foreign["id"]}, created=now),
    ]
    assert foreign["status"] == "active" and foreign["latest_invoice"]
    events.append(event("invoice.paid", {"id": foreign["latest_invoice"]}, created=now))
    for stripe_event in events:
        assert deliver_and_handle(client, stripe_event, now=now) == PROCESSED

    assert session.scalars(select(Customer)).all() == []
    assert session.scalars(select(Subscription)).all() == []
    assert session.scalars(select(Invoice)).all() == []


def test_a_subscription_event_before_its_customer_is_linked_is_resolved_from_metadata_or_retried(
    client: FlaskClient,
    stripe: LocalstripeServer,
    plans: dict[str, Plan],
    session: Session,
    gateway: StripeGateway,
    clock: FixedClock,
) -> None:
    now = clock.now()
    public_id = "rdr_signs_up_later"
    customer = gateway.create_customer(
        "later@example.org", metadata={"tollgate_reader_id": public_id}
    )
    gateway.attach_default_payment_method(customer.id, stripe.create_card())
    price = plans[MONTHLY].stripe_price_id
    assert price is not None
    subscription = gateway.create_subscription(
        customer.id, price, metadata={"tollgate_reader_id": public_id}
    )
    created = event("customer.subscription.created", {"id": subscription.id}, created=now)

    status = deliver_and_handle(client, created, now=now)

    assert status == WebhookEventStatus.FAILED, "no such reader yet: retried, not forgotten"
    assert session.scalars(select(Subscription)).all() == []

    reader = factories.reader(public_id=public_id, email="later@example.org")
    session.commit()
    clock.advance(seconds=float(client.application.config["WORKER_RETRY_BASE"]))
    assert Worker(client.application).run_once().events == {Outcome.PROCESSED: 1}
    assert stored_status(session, created) == PROCESSED
    mirrored = session.scalars(select(Subscription)).one()
    assert (mirrored.reader_id, mirrored.customer.reader_id) == (reader.id, reader.id)
    assert mirrored.customer.stripe_id == customer.id
    assert payments.overview(session, reader, now=now).status == "active"


def test_a_customer_deleted_on_stripe_is_marked_deleted_and_the_event_not_retried(
    client: FlaskClient,
    stripe: LocalstripeServer,
    reader: Reader,
    session: Session,
    clock: FixedClock,
) -> None:
    now = clock.now()
    assert reader.customer is not None
    stripe_id = reader.customer.stripe_id
    stripe.request("DELETE", f"/v1/customers/{stripe_id}")
    deleted = event("customer.deleted", {"id": stripe_id}, created=now)

    assert deliver_and_handle(client, deleted, now=now) == PROCESSED
    session.expire_all()
    customer = session.scalars(select(Customer)).one()
    assert customer.deleted_at == now
    gone = event("customer.subscription.deleted", {"id": "sub_gone"}, created=now)
    assert deliver_and_handle(client, gone, now=now) == PROCESSED


@pytest.mark.postgres_only
def test_two_events_about_a_new_subscription_handled_at_the_same_moment_create_it_once(
    app: Flask,
    plans: dict[str, Plan],
    reader: Reader,
    session: Session,
    gateway: StripeGateway,
    clock: FixedClock,
) -> None:
    if db.engine().dialect.name != "postgresql":
        pytest.fail("run with TEST_DATABASE_URL pointing at PostgreSQL (make test does)")
    subscription_id = subscribe_behind_our_back(gateway, reader, plans[MONTHLY])
    invoice_id = gateway.retrieve_subscription(subscription_id).latest_invoice_id
    pair = [
        ("customer.subscription.created", {"id": subscription_id}),
        ("invoice.payment_succeeded", {"id": invoice_id}),
    ]

    policy = RetryPolicy.from_config(dict(app.config))
    for _ in range(4):
        forget_the_mirror(session)
        row_ids = [
            store.store(session, event(kind, obj, created=clock.now()), now=clock.now())[0]
            for kind, obj in pair
        ]
        session.commit()
        for position, row_id in enumerate(row_ids):
            claimed = store.claim_for_replay(
                session, row_id, now=clock.now(), worker=f"w{position}", lease=policy.lease
            )
            assert claimed
        session.commit()
        start = threading.Barrier(len(row_ids))
        outcomes: list[Outcome] = []

        def handle(
            position: int, row_id: int, start: threading.Barrier, outcomes: list[Outcome]
        ) -> None:
            with app.app_context():
                start.wait()
                gateway = app.extensions["stripe_gateway"]
                outcomes.append(process(row_id, gateway, worker=f"w{position}", policy=policy))

        threads = [
            threading.Thread(target=handle, args=(position, row_id, start, outcomes))
            for position, row_id in enumerate(row_ids)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)

        assert outcomes == [Outcome.PROCESSED, Outcome.PROCESSED]
        session.expire_all()
        assert len(session.scalars(select(Customer)).all()) == 1
        assert len(session.scalars(select(Subscription)).all()) == 1
        assert len(session.scalars(select(Invoice)).all()) == 1
        assert ledger(session) == [("created", 0, 1200)]


class DisputingGateway(StripeGateway):
    """The real gateway on localstripe, plus the disputes localstripe lacks: ``disputes`` holds
    what Stripe would answer for each dispute id."""

    disputes: dict[str, StripeDisputeData]

    def retrieve_dispute(self, dispute_id: str) -> StripeDisputeData:
        """The dispute as set by the test."""
        return self.disputes[dispute_id]


@pytest.fixture
def disputing(app_config: dict[str, Any], stripe: LocalstripeServer) -> DisputingGateway:
    """The app's gateway, able to answer for disputes (ask for it before ``app``)."""
    gateway = DisputingGateway.from_config(
        {"STRIPE_SECRET_KEY": "sk_test_localstripe", "STRIPE_API_BASE": stripe.url}
    )
    gateway.disputes = {}
    app_config["STRIPE_GATEWAY"] = gateway
    return gateway


def test_a_chargeback_is_recorded_against_its_invoice_and_closed_once(
    disputing: DisputingGateway,
    client: FlaskClient,
    stripe: LocalstripeServer,
    session: Session,
    clock: FixedClock,
) -> None:
    now = clock.now()
    plans = plans_on_sale(session, disputing)
    reader = reader_with_card(session, disputing, stripe, now)
    payments.subscribe(session, disputing, reader, MONTHLY, now=now)
    session.commit()
    invoice = session.scalars(select(Invoice)).one()
    intent = disputing.invoice_payment_intent(invoice.stripe_id)
    assert intent is not None and plans
    charge_id = stripe.request("GET", f"/v1/payment_intents/{intent.id}")["latest_charge"]["id"]

    def dispute(status: str) -> StripeDisputeData:
        return StripeDisputeData(
            id="dp_1",
            amount=1200,
            currency="eur",
            status=status,
            reason="fraudulent",
            charge_id=charge_id,
            payment_intent_id=intent.id,
            created=now,
            metadata={"tollgate_app": "tollgate"},
        )

    disputing.disputes["dp_1"] = dispute("needs_response")
    opened = event("charge.dispute.created", {"id": "dp_1"}, created=now)
    assert deliver_and_handle(client, opened, now=now) == PROCESSED
    session.expire_all()
    recorded = session.scalars(select(Dispute)).one()
    assert (recorded.invoice_id, recorded.amount, recorded.status, recorded.closed_at) == (
        invoice.id,
        1200,
        "needs_response",
        None,
    )

    disputing.disputes["dp_1"] = dispute("lost")
    for _ in range(2):
        closed = event("charge.dispute.closed", {"id": "dp_1"}, created=now)
        assert deliver_and_handle(client, closed, now=now) == PROCESSED
        clock.advance(minutes=5)

    session.expire_all()
    assert (recorded.status, recorded.closed_at) == ("lost", now), "closed when first seen closed"
