"""The subscribe page asks where the reader lives, and asks again when their card says otherwise."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.clock import FixedClock
from billing.models import Customer, Invoice, Plan, Reader, Subscription
from tests import factories
from tests.conftest import post_form
from tests.helpers import login
from tests.payments_support import FRENCH_CARD, GERMAN_CARD
from tests.stripe_server import LocalstripeServer

pytestmark = [pytest.mark.usefixtures("stripe", "publisher_in_belgium"), pytest.mark.wall_clock]

MONTHLY = "individual-monthly"


@pytest.fixture
def reader(app: Flask, session: Session, clock: FixedClock) -> Reader:
    """A verified reader in Germany, without a trial."""
    created = factories.reader(
        email="greta@example.org", country="DE", created_at=clock.now() - timedelta(days=40)
    )
    session.commit()
    return created


@pytest.fixture
def client(app: Flask, reader: Reader, plans: dict[str, Plan]) -> FlaskClient:
    """A browser in which ``reader`` is logged in."""
    browser = app.test_client()
    login(browser, reader)
    return browser


def text(response: Any) -> str:
    """The page as a reader reads it."""
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", response.get_data(as_text=True), flags=re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def csrf_of(response: Any) -> str:
    """The CSRF token of the form on a page."""
    found = re.search(
        r'name="csrf_token" type="hidden" value="([^"]+)"', response.get_data(as_text=True)
    )
    assert found is not None, "no form on the page"
    return found.group(1)


def subscribe_with_french_card(client: FlaskClient, stripe: LocalstripeServer) -> Any:
    """The reader in Germany subscribes monthly with a French card: the page that asks."""
    method = stripe.create_card(FRENCH_CARD)
    return post_form(
        client, "/subscribe", {"plan": MONTHLY, "country": "DE", "payment_method": method}
    )


def subscriptions(session: Session) -> list[Subscription]:
    """Every mirrored subscription, fresh."""
    session.expire_all()
    return list(session.scalars(select(Subscription)))


def test_the_subscribe_page_asks_for_the_country_prefilled_from_the_account(
    client: FlaskClient,
) -> None:
    page = client.get("/subscribe").get_data(as_text=True)

    assert 'name="country"' in page
    assert '<option selected value="DE">' in page or '<option value="DE" selected>' in page
    assert "Prices include the VAT of the country you live in" in page


def test_a_card_from_the_readers_country_subscribes_at_once_with_that_countrys_vat(
    client: FlaskClient, stripe: LocalstripeServer, session: Session
) -> None:
    method = stripe.create_card(GERMAN_CARD)

    answer = post_form(
        client, "/subscribe", {"plan": MONTHLY, "country": "DE", "payment_method": method}
    )

    assert answer.status_code == 302
    assert "/subscribe/done" in answer.headers["Location"]
    invoice = session.scalars(select(Invoice)).one()
    assert (invoice.total, invoice.tax, invoice.tax_country) == (1200, 79, "DE")
    assert invoice.tax_evidence == {
        "declared_country": "DE",
        "card_country": "DE",
        "agrees": True,
        "confirmed_by_reader": False,
    }


def test_a_card_from_another_country_asks_the_reader_to_confirm_before_charging(
    client: FlaskClient, stripe: LocalstripeServer, session: Session
) -> None:
    asked = subscribe_with_french_card(client, stripe)

    assert asked.status_code == 200
    words = text(asked)
    assert "You told us you live in Germany , but your card was issued in France" in words
    assert "I live in Germany" in words and "I live in France" in words
    assert "nothing has been charged yet" in words
    assert subscriptions(session) == []
    customer = session.scalars(select(Customer)).one()
    assert (customer.card_country, customer.declared_country) == ("FR", None)

    confirmed = client.post(
        "/subscribe/country",
        data={"csrf_token": csrf_of(asked), "plan": MONTHLY, "declared": "DE", "country": "DE"},
    )

    assert confirmed.status_code == 302
    assert "/subscribe/done" in confirmed.headers["Location"]
    invoice = session.scalars(select(Invoice)).one()
    assert (invoice.tax_country, invoice.tax_rate, invoice.tax) == ("DE", 7, 79)
    assert invoice.tax_evidence == {
        "declared_country": "DE",
        "card_country": "FR",
        "agrees": False,
        "confirmed_by_reader": True,
    }


def test_choosing_the_cards_country_instead_taxes_there_and_needs_no_confirmation(
    client: FlaskClient, stripe: LocalstripeServer, session: Session
) -> None:
    asked = subscribe_with_french_card(client, stripe)
    token = csrf_of(asked)

    chosen = client.post(
        "/subscribe/country",
        data={"csrf_token": token, "plan": MONTHLY, "declared": "DE", "country": "FR"},
    )

    assert chosen.status_code == 302
    invoice = session.scalars(select(Invoice)).one()
    assert (invoice.tax_country, invoice.tax) == ("FR", 25)  # 1200 * 2.1 / 102.1 = 24.68
    assert invoice.tax_evidence == {
        "declared_country": "FR",
        "card_country": "FR",
        "agrees": True,
        "confirmed_by_reader": False,
    }


def test_a_country_not_on_the_list_is_refused_naming_the_field(
    client: FlaskClient, stripe: LocalstripeServer, session: Session
) -> None:
    method = stripe.create_card(GERMAN_CARD)

    answer = post_form(
        client, "/subscribe", {"plan": MONTHLY, "country": "QQ", "payment_method": method}
    )

    assert answer.status_code == 400
    assert "Choose the country you live in from the list." in text(answer)
    assert subscriptions(session) == []


def test_confirming_a_country_that_was_not_offered_is_refused(
    client: FlaskClient, stripe: LocalstripeServer, session: Session
) -> None:
    asked = subscribe_with_french_card(client, stripe)
    refused = client.post(
        "/subscribe/country",
        data={"csrf_token": csrf_of(asked), "plan": MONTHLY, "declared": "DE", "country": "IT"},
    )

    assert refused.status_code == 400
    assert "Choose the country you live in." in text(refused)
    assert subscriptions(session) == []


def test_the_invoice_list_shows_the_vat_inside_each_price(
    client: FlaskClient, stripe: LocalstripeServer, session: Session
) -> None:
    method = stripe.create_card(GERMAN_CARD)
    post_form(client, "/subscribe", {"plan": MONTHLY, "country": "DE", "payment_method": method})

    words = text(client.get("/account/invoices"))

    assert "VAT included" in words
    assert "€12.00 €0.79 (7% DE) Paid" in words
    assert "Reverse charge" not in words


def test_a_reverse_charged_invoice_says_so_with_the_legal_mention(
    client: FlaskClient, stripe: LocalstripeServer, session: Session, reader: Reader
) -> None:
    method = stripe.create_card(GERMAN_CARD)
    post_form(client, "/subscribe", {"plan": MONTHLY, "country": "DE", "payment_method": method})
    invoice = session.scalars(select(Invoice)).one()
    invoice.reverse_charge, invoice.tax_kind, invoice.tax_rate = True, "reverse_charge", 0
    session.commit()

    words = text(client.get("/account/invoices"))

    assert "€12.00 Reverse charge Paid" in words
    assert "Reverse charge: VAT to be accounted for by the recipient (Article 196" in words
