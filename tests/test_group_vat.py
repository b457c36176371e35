"""A group's admin changes its VAT number and country on the group page, against a real
localstripe: reverse charge from the next invoice with a foreign VAT number, back to VAT without
one, a malformed number refused, and only admins may."""

from __future__ import annotations

import html as html_module
import re
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.clock import FixedClock
from billing.gateway import StripeGateway
from billing.models import AuditLog, Customer, Group, Invoice, Subscription, WebhookEventStatus
from billing.services import groups
from billing.views.payments import long_date
from tests import factories
from tests.conftest import csrf_token, post_form
from tests.helpers import StandInHandler, login, serving
from tests.payments_support import (
    WEBHOOK_SECRET,
    deliver_and_handle,
    event,
    order_group,
    plans_on_sale,
)
from tests.stripe_server import LocalstripeServer

pytestmark = [pytest.mark.usefixtures("stripe", "publisher_in_belgium"), pytest.mark.wall_clock]

SEAT = 9600
"""The demo group seat: 96.00 EUR a year, net."""
GERMAN_VAT = 672
"""7 % of a seat, on top."""
GERMAN_VAT_ID = "DE136695976"
UNREGISTERED_VAT_ID = "DE123456788"
"""Valid in format and check digit, but not registered (says the VIES stand-in)."""


class _Vies(StandInHandler):
    """VIES's REST answer: every number is registered but ``DE123456788``."""

    def do_GET(self) -> None:
        number = self.path.strip("/").split("/")[-1]
        self.send_json({"isValid": number != UNREGISTERED_VAT_ID[2:]})


@pytest.fixture
def vies_url() -> Iterator[str]:
    """A VIES stand-in on a free port."""
    with serving(_Vies) as base:
        yield f"{base}/vies"


@pytest.fixture
def app_config(app_config: dict[str, Any], vies_url: str) -> dict[str, Any]:
    """The publisher asks VIES; Stripe's events are signed with the test secret."""
    app_config["STRIPE_WEBHOOK_SECRETS"] = [WEBHOOK_SECRET]
    app_config["VIES_URL"] = vies_url
    return app_config


@pytest.fixture
def gateway(app: Flask) -> StripeGateway:
    """The app's gateway to this test's localstripe."""
    found: StripeGateway = app.extensions["stripe_gateway"]
    return found


def german_group(
    client: FlaskClient, session: Session, gateway: StripeGateway, clock: FixedClock, vat_id: str
) -> Group:
    """A German organisation of 3 seats paying by invoice (its first invoice paid), ordered by
    the logged-in admin, with ``vat_id``."""
    plans_on_sale(session, gateway)
    admin = factories.reader(email="boss@ministry.example")
    session.commit()
    login(client, admin)
    group, _ = order_group(client, session, payment="invoice", vat_id=vat_id)
    assert groups.simulate_bank_transfer(session, gateway, group, now=clock.now()) == 1
    session.commit()
    return group


def change_tax(client: FlaskClient, group: Group, country: str, vat_id: str) -> Any:
    """The admin saves the organisation's country and VAT number on its page."""
    return post_form(
        client,
        f"/groups/{group.public_id}/tax",
        {"country": country, "vat_id": vat_id},
    )


def next_invoice(
    client: FlaskClient, session: Session, stripe: LocalstripeServer, clock: FixedClock
) -> Invoice:
    """The subscription renews on Stripe and its new invoice is mirrored from the events."""
    subscription = session.scalars(select(Subscription)).one()
    renewed = stripe.renew(subscription.stripe_id)
    now = clock.now()
    for event_type, object_id in (
        ("invoice.finalized", renewed["latest_invoice"]),
        ("customer.subscription.updated", subscription.stripe_id),
    ):
        status = deliver_and_handle(
            client, event(event_type, {"id": object_id}, created=now), now=now
        )
        assert status == WebhookEventStatus.PROCESSED, event_type
    session.expire_all()
    return session.scalars(
        select(Invoice).where(Invoice.stripe_id == renewed["latest_invoice"])
    ).one()


def stripe_tax_ids(stripe: LocalstripeServer, customer: Customer) -> list[str]:
    """The values of the customer's tax ids on Stripe."""
    listed = stripe.request("GET", f"/v1/customers/{customer.stripe_id}/tax_ids")
    return [row["value"] for row in listed["data"]]


def words(response: Any) -> str:
    """The page as a reader reads it."""
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", response.get_data(as_text=True), flags=re.S)
    return html_module.unescape(" ".join(re.sub(r"<[^>]+>", " ", html).split()))


def test_the_group_page_says_how_the_organisation_is_taxed_and_from_when_a_change_applies(
    client: FlaskClient, session: Session, gateway: StripeGateway, clock: FixedClock
) -> None:
    group = german_group(client, session, gateway, clock, "")
    renews = session.scalars(select(Subscription)).one().current_period_end

    page = client.get(f"/groups/{group.public_id}")

    text = words(page)
    assert "Country and VAT number" in text
    assert (
        "Example Ministry is in Germany, without a VAT number: its seats are invoiced with Germany's VAT of 7 % on top of the net price"
        in text
    )
    assert f"A change applies from your next invoice, on {long_date(renews)}" in text
    assert 'action="/groups/' + group.public_id + '/tax"' in page.get_data(as_text=True)


def test_a_valid_foreign_vat_id_is_reverse_charged_from_the_next_invoice(
    client: FlaskClient,
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    clock: FixedClock,
) -> None:
    group = german_group(client, session, gateway, clock, "")
    first = session.scalars(select(Invoice)).one()
    renews = session.scalars(select(Subscription)).one().current_period_end

    saved = change_tax(client, group, "DE", "de 136 695 976")

    assert saved.status_code == 302
    shown = words(client.get(saved.headers["Location"]))
    assert (
        f"From your next invoice, on {long_date(renews)}, your seats are invoiced with reverse "
        "charge (0 % VAT: you account for it) instead of Germany's VAT of 7 %" in shown
    )
    assert f"with the VAT number {GERMAN_VAT_ID} (confirmed by VIES)" in shown
    session.expire_all()
    customer = session.scalars(select(Customer)).one()
    assert (group.vat_id, customer.vat_id) == (GERMAN_VAT_ID, GERMAN_VAT_ID)
    assert gateway.retrieve_customer(customer.stripe_id).tax_exempt == "reverse"
    assert stripe_tax_ids(stripe, customer) == [GERMAN_VAT_ID]
    assert session.scalars(select(Subscription)).one().tax_rate_id is None
    assert (first.tax, first.reverse_charge) == (3 * GERMAN_VAT, False), "issued: kept"
    logged = session.scalars(select(AuditLog).where(AuditLog.action == "group.tax_changed")).one()
    assert (logged.details["kind_before"], logged.details["kind_after"]) == (
        "oss",
        "reverse_charge",
    )

    renewal = next_invoice(client, session, stripe, clock)

    assert (renewal.total, renewal.tax) == (3 * SEAT, 0)
    assert (renewal.reverse_charge, renewal.tax_kind) == (True, "reverse_charge")


def test_a_vat_id_vies_says_is_not_registered_is_kept_with_the_answer_and_taxed_like_a_consumer(
    client: FlaskClient, session: Session, gateway: StripeGateway, clock: FixedClock
) -> None:
    group = german_group(client, session, gateway, clock, "")

    saved = change_tax(client, group, "DE", UNREGISTERED_VAT_ID)

    assert saved.status_code == 302
    session.expire_all()
    customer = session.scalars(select(Customer)).one()
    assert (customer.vat_id, customer.vies_valid) == (UNREGISTERED_VAT_ID, False)
    assert customer.vies_checked_at == clock.now()
    assert gateway.retrieve_customer(customer.stripe_id).tax_exempt == "none"
    text = words(client.get(f"/groups/{group.public_id}"))
    assert (
        f"with the VAT number {UNREGISTERED_VAT_ID} (not registered, says VIES): its seats are "
        "invoiced with Germany's VAT of 7 %" in text
    )


def test_removing_the_vat_id_taxes_the_organisation_like_a_consumer_of_its_country(
    client: FlaskClient,
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    clock: FixedClock,
) -> None:
    group = german_group(client, session, gateway, clock, GERMAN_VAT_ID)
    customer = session.scalars(select(Customer)).one()
    assert gateway.retrieve_customer(customer.stripe_id).tax_exempt == "reverse"

    saved = change_tax(client, group, "DE", "")

    assert saved.status_code == 302
    session.expire_all()
    assert group.vat_id is None
    assert gateway.retrieve_customer(customer.stripe_id).tax_exempt == "none"
    assert stripe_tax_ids(stripe, customer) == []
    renewal = next_invoice(client, session, stripe, clock)
    assert (renewal.total, renewal.tax) == (3 * (SEAT + GERMAN_VAT), 3 * GERMAN_VAT)
    assert (renewal.tax_country, renewal.tax_kind, renewal.reverse_charge) == ("DE", "oss", False)


def test_moving_to_the_publishers_country_charges_its_domestic_vat_even_with_a_vat_id(
    client: FlaskClient, session: Session, gateway: StripeGateway, clock: FixedClock
) -> None:
    group = german_group(client, session, gateway, clock, GERMAN_VAT_ID)
    customer = session.scalars(select(Customer)).one()

    saved = change_tax(client, group, "BE", "BE0411905847")

    assert saved.status_code == 302
    session.expire_all()
    assert (group.country, group.vat_id) == ("BE", "BE0411905847")
    stripe_customer = gateway.retrieve_customer(customer.stripe_id)
    assert (stripe_customer.country, stripe_customer.tax_exempt) == ("BE", "none")
    page = client.get(f"/groups/{group.public_id}")
    assert 'data-tax-now="domestic"' in page.get_data(as_text=True)
    assert "its seats are invoiced with no VAT (Belgium)" in words(page), "Belgium's rate is 0 %"


@pytest.mark.parametrize(
    ("country", "vat_id", "field"),
    [
        ("DE", "DE123", "vat_id"),
        ("DE", "FR40303265045", "vat_id"),
        ("QQ", "", "country"),
    ],
)
def test_a_malformed_vat_id_or_unknown_country_is_refused_naming_the_field(
    client: FlaskClient,
    session: Session,
    gateway: StripeGateway,
    clock: FixedClock,
    country: str,
    vat_id: str,
    field: str,
) -> None:
    group = german_group(client, session, gateway, clock, "")

    refused = change_tax(client, group, country, vat_id)

    assert refused.status_code == 400
    assert f'data-field="{field}"' in refused.get_data(as_text=True)
    session.expire_all()
    assert (group.country, group.vat_id) == ("DE", None)
    customer = session.scalars(select(Customer)).one()
    assert gateway.retrieve_customer(customer.stripe_id).tax_exempt == "none"
    assert (
        session.scalars(select(AuditLog).where(AuditLog.action == "group.tax_changed")).all() == []
    )


def test_a_member_who_is_not_an_admin_may_not_change_them_and_a_stranger_finds_nothing(
    app: Flask, client: FlaskClient, session: Session, gateway: StripeGateway, clock: FixedClock
) -> None:
    group = german_group(client, session, gateway, clock, "")
    member = factories.reader(email="ana@ministry.example")
    groups.claim_seat(session, group, member, now=clock.now())
    stranger = factories.reader(email="someone@elsewhere.example")
    session.commit()
    answers = {}
    for who in (member, stranger):
        browser = app.test_client()
        login(browser, who)
        token = csrf_token(browser, "/account")
        answers[who.email] = browser.post(
            f"/groups/{group.public_id}/tax",
            data={"country": "DE", "vat_id": GERMAN_VAT_ID, "csrf_token": token},
        ).status_code

    assert answers == {"ana@ministry.example": 403, "someone@elsewhere.example": 404}
    session.expire_all()
    assert group.vat_id is None


def test_saving_the_same_country_and_vat_id_changes_nothing(
    client: FlaskClient, session: Session, gateway: StripeGateway, clock: FixedClock
) -> None:
    group = german_group(client, session, gateway, clock, "")

    saved = change_tax(client, group, "DE", "")

    assert saved.status_code == 302
    assert "nothing changed" in words(client.get(saved.headers["Location"]))
    assert (
        session.scalars(select(AuditLog).where(AuditLog.action == "group.tax_changed")).all() == []
    )
