"""A group's money after the purchase, against a real localstripe: the yearly renewal paid or
declined, and a refund of a group invoice, through Stripe's events as the worker handles them."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.clock import FixedClock
from billing.gateway import StripeGateway
from billing.models import (
    Customer,
    Group,
    Invoice,
    InvoiceStatus,
    Refund,
    Subscription,
    SubscriptionEvent,
    SubscriptionStatus,
    WebhookEventStatus,
)
from billing.services import groups, reports, stripe_mirror
from billing.services.entitlements import Reason, decide
from billing.services.reports.base import Filters
from tests import factories
from tests.conftest import Outbox, csrf_token, post_form, real_now
from tests.payments_support import (
    DECLINED_ON_CHARGE,
    VISA,
    WEBHOOK_SECRET,
    deliver_and_handle,
    event,
    order_group,
    plans_on_sale,
)
from tests.stripe_server import LocalstripeServer

pytestmark = [pytest.mark.usefixtures("stripe"), pytest.mark.wall_clock]

PROCESSED = WebhookEventStatus.PROCESSED
SEAT = 9600
"""The demo group seat: 96.00 EUR a year, net."""


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    """Stripe's events are signed with the test secret."""
    app_config["STRIPE_WEBHOOK_SECRETS"] = [WEBHOOK_SECRET]
    return app_config


@pytest.fixture
def gateway(app: object) -> StripeGateway:
    from flask import current_app

    return current_app.extensions["stripe_gateway"]  # type: ignore[no-any-return]


def _group_by_card(
    client: FlaskClient, session: Session, gateway: StripeGateway, stripe: LocalstripeServer
) -> tuple[Group, Subscription]:
    """A German organisation without a VAT number (7 % on top) paying 3 seats by card, with one
    member besides its admin."""
    plans_on_sale(session, gateway)
    admin = factories.reader(email="boss@ministry.example")
    session.commit()
    response = post_form(client, "/login", {"email": admin.email, "password": factories.PASSWORD})
    assert response.status_code == 302
    group, card_form = order_group(client, session, payment="card")
    secret = client.post(
        f"/groups/{group.public_id}/setup-intent",
        headers={"X-CSRFToken": csrf_token(client, card_form)},
    ).get_json()["client_secret"]
    card = stripe.create_card(VISA)
    stripe.confirm_setup_intent(secret.split("_secret_")[0], card)
    paid = post_form(client, card_form, {"payment_method": card})
    assert paid.status_code == 302, paid.get_data(as_text=True)
    groups.claim_seat(
        session, group, factories.reader(email="ana@ministry.example"), now=real_now()
    )
    session.commit()
    return group, session.scalars(select(Subscription)).one()


def _member(session: Session, group: Group) -> Any:
    return next(
        m.reader for m in groups.members(session, group) if m.reader.email.startswith("ana")
    )


def _handle(client: FlaskClient, clock: FixedClock, *events: tuple[str, str]) -> None:
    now = clock.now()
    for event_type, object_id in events:
        status = deliver_and_handle(
            client, event(event_type, {"id": object_id}, created=now), now=now
        )
        assert status == PROCESSED, event_type


def _ledger(session: Session) -> list[tuple[str, int, int]]:
    session.expire_all()
    rows = session.scalars(select(SubscriptionEvent).order_by(SubscriptionEvent.id))
    return [(e.kind.value, e.mrr_before, e.mrr_after) for e in rows]


def test_a_yearly_renewal_paid_by_card_is_mirrored_as_renewed_and_keeps_the_seats(
    client: FlaskClient,
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    clock: FixedClock,
) -> None:
    group, subscription = _group_by_card(client, session, gateway, stripe)
    first_end = subscription.current_period_end
    monthly = 3 * SEAT // 12

    renewed = stripe.renew(subscription.stripe_id)
    clock.set(first_end + timedelta(minutes=5))
    _handle(
        client,
        clock,
        ("invoice.paid", renewed["latest_invoice"]),
        ("customer.subscription.updated", subscription.stripe_id),
    )

    session.expire_all()
    mirrored = session.get_one(Subscription, subscription.id)
    assert (mirrored.status, mirrored.quantity) == (SubscriptionStatus.ACTIVE, 3)
    assert mirrored.current_period_start == first_end
    assert mirrored.current_period_end > first_end + timedelta(days=364)
    renewal = session.scalars(
        select(Invoice).where(Invoice.stripe_id == renewed["latest_invoice"])
    ).one()
    assert renewal.status == InvoiceStatus.PAID
    assert (renewal.subtotal, renewal.tax, renewal.total) == (3 * SEAT, 3 * 672, 3 * (SEAT + 672))
    assert _ledger(session) == [("created", 0, monthly), ("renewed", monthly, monthly)]
    assert groups.seats_in_use(session, group) == 2
    decision = decide(_member(session, group), clock.now())
    assert (decision.reason, decision.group, decision.until) == (
        Reason.GROUP_SEAT,
        group.public_id,
        mirrored.current_period_end,
    )


def test_a_declined_renewal_leaves_members_reading_through_the_grace_then_tells_them_payment_failed(
    client: FlaskClient,
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    clock: FixedClock,
    outbox: Outbox,
) -> None:
    group, subscription = _group_by_card(client, session, gateway, stripe)
    customer = subscription.customer.stripe_id
    gateway.attach_default_payment_method(customer, stripe.create_card(DECLINED_ON_CHARGE))
    first_end = subscription.current_period_end
    monthly = 3 * SEAT // 12

    renewed = stripe.renew(subscription.stripe_id)
    clock.set(first_end + timedelta(minutes=5))
    _handle(
        client,
        clock,
        ("invoice.payment_failed", renewed["latest_invoice"]),
        ("customer.subscription.updated", subscription.stripe_id),
    )

    session.expire_all()
    mirrored = session.get_one(Subscription, subscription.id)
    assert mirrored.status == SubscriptionStatus.PAST_DUE
    assert _ledger(session) == [
        ("created", 0, monthly),
        ("renewed", monthly, monthly),
        ("past_due", monthly, monthly),
    ]
    told = {m.to for m in outbox.all() if "payment" in m.subject.lower()}
    assert {"accounts@ministry.example", "boss@ministry.example"} <= told
    member = _member(session, group)
    grace_end = clock.now() + timedelta(days=7)
    during = decide(member, clock.now())
    assert (during.reason, during.group, during.until) == (
        Reason.GROUP_SEAT,
        group.public_id,
        grace_end,
    ), "members read on, through the group, until the grace ends"
    assert decide(member, grace_end).reason == Reason.PAYMENT_FAILED
    assert groups.seats_in_use(session, group) == 2, "a failed payment frees no seat"


def test_a_refund_of_a_group_invoice_is_mirrored_with_its_vat_and_lowers_the_vat_return(
    client: FlaskClient,
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    clock: FixedClock,
) -> None:
    group, _subscription = _group_by_card(client, session, gateway, stripe)
    invoice = session.scalars(select(Invoice)).one()
    assert session.get_one(Customer, invoice.customer_id).group_id == group.id
    assert (invoice.total, invoice.tax, invoice.tax_country) == (30816, 2016, "DE")

    refund = gateway.refund_invoice(invoice.stripe_id, amount=15408)
    assert refund.charge_id is not None
    stripe_mirror.sync_charge_refunds(session, gateway, refund.charge_id, now=clock.now())
    session.commit()

    session.expire_all()
    stored = session.scalars(select(Refund)).one()
    assert (stored.amount, stored.tax) == (15408, 1008)
    assert session.get_one(Invoice, invoice.id).amount_refunded == 15408
    kinds = [kind for kind, _before, _after in _ledger(session)]
    assert kinds == ["created", "refunded"]
    today = clock.now().date()
    quarter = Filters(start=today.replace(day=1), end=today)
    table = reports.get("vat").build(session, quarter, clock.now(), None)
    keys = [c.key for c in table.columns]
    german = [dict(zip(keys, row, strict=True)) for row in table.rows if "DE" in row]
    assert {(r["kind"], r["taxable"], r["vat"]) for r in german} >= {
        ("sale", 28800, 2016),
        ("refund", -14400, -1008),
    }, german


def _group_by_invoice(
    client: FlaskClient, session: Session, gateway: StripeGateway, clock: FixedClock
) -> tuple[Group, Subscription]:
    """An organisation of 3 seats paying by invoice, its first invoice paid by bank transfer,
    with one member besides its admin."""
    plans_on_sale(session, gateway)
    admin = factories.reader(email="boss@ministry.example")
    session.commit()
    post_form(client, "/login", {"email": admin.email, "password": factories.PASSWORD})
    group, _ = order_group(client, session, payment="invoice")
    assert groups.simulate_bank_transfer(session, gateway, group, now=clock.now()) == 1
    groups.claim_seat(
        session, group, factories.reader(email="ana@ministry.example"), now=real_now()
    )
    session.commit()
    return group, session.scalars(select(Subscription)).one()


def test_a_renewal_paid_by_invoice_is_sent_keeps_access_while_open_and_counts_once_paid(
    client: FlaskClient,
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    clock: FixedClock,
) -> None:
    group, subscription = _group_by_invoice(client, session, gateway, clock)
    first_end = subscription.current_period_end

    renewed = stripe.renew(subscription.stripe_id)
    clock.set(first_end + timedelta(minutes=5))
    _handle(
        client,
        clock,
        ("invoice.finalized", renewed["latest_invoice"]),
        ("customer.subscription.updated", subscription.stripe_id),
    )

    session.expire_all()
    sent = session.scalars(select(Invoice).where(Invoice.stripe_id == renewed["latest_invoice"]))
    renewal = sent.one()
    assert (renewal.status, renewal.total) == (InvoiceStatus.OPEN, 3 * (SEAT + 672))
    mirrored = session.get_one(Subscription, subscription.id)
    assert (mirrored.status, mirrored.current_period_start) == (
        SubscriptionStatus.ACTIVE,
        first_end,
    )
    assert decide(_member(session, group), clock.now()).reason == Reason.GROUP_SEAT

    assert groups.simulate_bank_transfer(session, gateway, group, now=clock.now()) == 1
    session.commit()
    session.expire_all()
    assert session.get_one(Invoice, renewal.id).status == InvoiceStatus.PAID
    monthly = 3 * SEAT // 12
    assert _ledger(session) == [("created", 0, monthly), ("renewed", monthly, monthly)]
    assert groups.seats_in_use(session, group) == 2


def test_a_group_cancelled_at_the_end_of_its_year_ends_then_and_its_members_lose_group_access(
    client: FlaskClient,
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    clock: FixedClock,
) -> None:
    group, subscription = _group_by_card(client, session, gateway, stripe)
    show = f"/groups/{group.public_id}"
    client.post(f"{show}/renewal?renew=0", data={"csrf_token": csrf_token(client, show)})
    member = _member(session, group)
    factories.GrantFactory(reader=member, expires_at=clock.now() + timedelta(days=400))
    session.commit()
    first_end = subscription.current_period_end

    stripe.renew(subscription.stripe_id)
    clock.set(first_end + timedelta(minutes=5))
    _handle(client, clock, ("customer.subscription.deleted", subscription.stripe_id))

    session.expire_all()
    assert session.get_one(Subscription, subscription.id).status == SubscriptionStatus.CANCELED
    monthly = 3 * SEAT // 12
    assert _ledger(session) == [
        ("created", 0, monthly),
        ("cancelled", monthly, monthly),
        ("ended", monthly, 0),
    ]
    assert decide(member, clock.now()).reason == Reason.COMPLIMENTARY, "their own access stays"
    admin = next(
        m.reader for m in groups.members(session, group) if m.reader.email.startswith("boss")
    )
    assert not decide(admin, clock.now()).granted, "no group access once the group has ended"
