"""Helpers shared by the payment tests (plain functions; the fixtures they share, ``plans``,
``publisher_in_belgium`` and the ``wall_clock`` clock, are in ``tests/conftest.py``).

They act as the reader's browser and the bank would: plans on sale in the test's localstripe, a
reader with a saved card, a group ordered on the order form, webhook events signed like Stripe's.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import delete, select
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from billing import db
from billing.cli import DEMO_PLANS
from billing.clock import FixedClock
from billing.gateway import StripeGateway
from billing.leases import RetryPolicy
from billing.models import (
    Customer,
    EntitlementChange,
    Group,
    Invoice,
    Plan,
    Reader,
    Refund,
    ScheduledSubscription,
    Subscription,
    SubscriptionEvent,
    WebhookEvent,
    WebhookEventStatus,
)
from billing.services import groups, payments, stripe_mirror, taxes
from tests import factories
from tests.conftest import post_form
from tests.stripe_server import LocalstripeServer
from webhooks import store
from webhooks.process import Outcome, process
from webhooks.verify import sign

VISA = "4242424242424242"
MASTERCARD = "5555555555554444"
GERMAN_CARD = "4000002760000016"
"""A card issued in Germany (its country is what Stripe reports as the card's)."""
FRENCH_CARD = "4000002500000003"
"""A card issued in France."""
DECLINED_ON_CHARGE = "4000000000000341"
DECLINED_ON_ATTACH = "4000000000000002"
THREE_D_SECURE_THEN_DECLINED = "4000008260003178"
FAILING_IBAN = "DE62370400440532013001"
"""A SEPA debit that is accepted, then declined when it would clear."""
GOOD_IBAN = "DE89370400440532013000"
"""A SEPA debit that clears."""
WEBHOOK_SECRET = "whsec_test_payments"


def plans_on_sale(session: Session, gateway: StripeGateway) -> dict[str, Plan]:
    """The demo plans (monthly 12.00, yearly 120.00, group seat 96.00 EUR), synced to Stripe."""
    for code, name, kind, interval, amount in DEMO_PLANS:
        factories.PlanFactory(
            code=code, name=name, kind=kind, interval=interval, amount=amount, stripe_price_id=None
        )
    payments.sync_plans(session, gateway)
    session.commit()
    return {plan.code: plan for plan in session.scalars(select(Plan))}


def ministry_group(
    session: Session,
    gateway: StripeGateway,
    admin: Reader,
    *,
    country: str = "DE",
    vat_id: str = "",
    by_invoice: bool,
    rules: groups.GroupRules,
    now: datetime,
) -> Group:
    """Example Ministry (German, without a VAT number unless told), 3 seats billed to
    accounts@ministry.example, ordered by ``admin`` as the order form does (by card: not paid
    yet; by invoice: running, its first invoice open)."""
    return groups.create_group(
        session,
        gateway,
        admin,
        name="Example Ministry",
        billing_email="accounts@ministry.example",
        country=country,
        vat_id=vat_id,
        seats=3,
        by_invoice=by_invoice,
        rules=rules,
        now=now,
    )


def reader_with_card(
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    now: datetime,
    *,
    number: str = VISA,
    **reader_fields: Any,
) -> Reader:
    """A verified reader whose Stripe customer has ``number`` as its default card (committed)."""
    reader = factories.reader(**reader_fields)
    save_card(session, gateway, stripe, reader, now, number)
    return reader


def subscribed_reader(
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    clock: FixedClock,
    country: str,
    plan_code: str,
    *,
    card: str = VISA,
    email: str = "reader@example.org",
) -> Reader:
    """A reader living in ``country`` who gave it on the subscribe form (confirming it when the
    card says otherwise) and subscribed to ``plan_code`` (committed). The default card is issued
    in Belgium on the stand-in (billing.devstripe)."""
    now = clock.now()
    reader = reader_with_card(
        session, gateway, stripe, now, number=card, country=country, email=email
    )
    customer = stripe_mirror.customer_of(session, reader)
    assert customer is not None
    confirmed = customer.card_country != country
    taxes.record_country_evidence(session, gateway, customer, country, confirmed=confirmed, now=now)
    payments.subscribe(session, gateway, reader, plan_code, now=now)
    session.commit()
    return reader


def save_card(
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    reader: Reader,
    now: datetime,
    number: str,
) -> None:
    """Save a new default card for ``reader`` the way the card form does, and commit."""
    payments.save_card(session, gateway, reader, stripe.create_card(number), now=now)
    session.commit()


def order_group(
    client: FlaskClient, session: Session, *, payment: str, vat_id: str = ""
) -> tuple[Group, str]:
    """The reader logged in on ``client`` orders 3 seats for Example Ministry, in Germany with
    ``vat_id``, paying by ``payment`` (``invoice`` or ``card``), and confirms the price shown: the
    new group, and where the order sends the browser next (the group's page or its card form)."""
    order = {
        "name": "Example Ministry",
        "billing_email": "accounts@ministry.example",
        "country": "DE",
        "vat_id": vat_id,
        "seats": "3",
        "payment": payment,
        "confirm": "yes",
    }
    created = post_form(client, "/groups/new", order)
    assert created.status_code == 302
    return session.scalars(select(Group)).one(), created.headers["Location"]


def ledger(
    session: Session, subscription: Subscription | None = None
) -> list[tuple[str, int, int]]:
    """The MRR ledger as (kind, before, after) in the order it was written (of one subscription,
    when given). Not by ``occurred_at``: starts and ends carry Stripe's (wall-clock) times, the
    rest the app's clock, which the tests hold still."""
    session.expire_all()
    query = select(SubscriptionEvent).order_by(SubscriptionEvent.id)
    if subscription is not None:
        query = query.where(SubscriptionEvent.subscription_id == subscription.id)
    return [(str(e.kind), e.mrr_before, e.mrr_after) for e in session.scalars(query)]


def only_subscription(session: Session) -> Subscription:
    """The one mirrored subscription (fresh from the database)."""
    session.expire_all()
    return session.scalars(select(Subscription)).one()


def wait_for(check: Callable[[], Any], session: Session, seconds: float = 8.0) -> Any:
    """Poll ``check`` (reading the database afresh each time) until it is truthy or time is up."""
    deadline = time.monotonic() + seconds
    while True:
        session.rollback()
        session.expire_all()
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


def event(event_type: str, stripe_object: dict[str, Any], *, created: datetime) -> dict[str, Any]:
    """A Stripe event about ``stripe_object`` (only its id and kind matter: handlers re-fetch)."""
    return {
        "id": f"evt_{uuid.uuid4().hex}",
        "object": "event",
        "type": event_type,
        "created": int(created.timestamp()),
        "livemode": False,
        "data": {"object": stripe_object},
    }


def post_event(
    client: FlaskClient,
    stripe_event: dict[str, Any],
    *,
    now: datetime,
    secret: str = WEBHOOK_SECRET,
) -> TestResponse:
    """Deliver ``stripe_event`` to ``/webhooks/stripe``, signed as Stripe signs it at ``now``."""
    body = json.dumps(stripe_event).encode()
    return client.post(
        "/webhooks/stripe",
        data=body,
        headers={"Stripe-Signature": sign(body, secret, int(now.timestamp()))},
        content_type="application/json",
    )


def deliver_and_handle(
    client: FlaskClient,
    stripe_event: dict[str, Any],
    *,
    now: datetime,
    secret: str = WEBHOOK_SECRET,
) -> WebhookEventStatus:
    """Deliver ``stripe_event`` as Stripe would, let a worker handle everything due (as
    ``flask billing worker --once``), and return where the event stands afterwards."""
    from billing.worker import Worker

    response = post_event(client, stripe_event, now=now, secret=secret)
    assert response.status_code == 200, response.get_json()
    Worker(client.application).run_once()
    with db.new_session() as fresh:
        status = fresh.scalar(
            select(WebhookEvent.status).where(WebhookEvent.stripe_event_id == stripe_event["id"])
        )
    assert status is not None
    return status


def store_and_handle(
    app: Flask, event_type: str, stripe_object: dict[str, Any], clock: FixedClock
) -> Outcome:
    """Store a Stripe event as the webhook does (without the HTTP part), then have a worker
    claim and handle it."""
    policy = RetryPolicy.from_config(dict(app.config))
    session = app.extensions["db_sessionmaker"]()
    try:
        row_id, _new = store.store(
            session, event(event_type, stripe_object, created=clock.now()), now=clock.now()
        )
        claimed = store.claim_for_replay(
            session, row_id, now=clock.now(), worker="test-worker", lease=policy.lease
        )
        session.commit()
        assert claimed
    finally:
        session.close()
    return process(row_id, app.extensions["stripe_gateway"], worker="test-worker", policy=policy)


def forget_the_mirror(session: Session) -> None:
    """Empty the mirror and the event log (Stripe keeps its objects), as after a lost database."""
    session.rollback()
    for model in (
        ScheduledSubscription,
        SubscriptionEvent,
        Refund,
        Invoice,
        Subscription,
        Customer,
        WebhookEvent,
        EntitlementChange,
    ):
        session.execute(delete(model))
    session.commit()
    session.expire_all()


def expected_tax(amount: int, rate: Decimal) -> int:
    """``amount * rate / (100 + rate)``, rounded half up, in exact rational arithmetic."""
    exact = Fraction(amount) * Fraction(rate) / (100 + Fraction(rate))
    whole, rest = divmod(exact, 1)
    return int(whole) + (1 if rest >= Fraction(1, 2) else 0)
