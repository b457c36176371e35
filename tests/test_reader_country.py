"""A reader who moved changes their country: the new evidence is recorded, the Stripe customer and
the running subscription's Tax Rate follow from the next invoice, never the invoices issued."""

from __future__ import annotations

import html
import re
from decimal import Decimal
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.clock import FixedClock
from billing.errors import ValidationFailed
from billing.gateway import StripeGateway
from billing.models import AuditLog, Customer, Invoice, Plan, Reader, Subscription, TaxRate
from billing.services import reader_country, taxes
from billing.services.vat import TaxKind
from billing.views.account import long_date
from tests import factories
from tests.conftest import post_form
from tests.helpers import login
from tests.payments_support import (
    GERMAN_CARD,
    expected_tax,
    only_subscription,
    subscribed_reader,
)
from tests.stripe_server import LocalstripeServer

pytestmark = [pytest.mark.usefixtures("stripe", "publisher_in_belgium"), pytest.mark.wall_clock]

MONTHLY = "individual-monthly"


def german_subscriber(
    session: Session, gateway: StripeGateway, stripe: LocalstripeServer, clock: FixedClock
) -> Reader:
    """A reader in Germany with a German card, subscribed monthly (one invoice, 7 % DE)."""
    return subscribed_reader(
        session, gateway, stripe, clock, "DE", MONTHLY, card=GERMAN_CARD, email="greta@example.org"
    )


def audit_actions(session: Session) -> list[str]:
    """Every audited action, oldest first."""
    return list(session.scalars(select(AuditLog.action).order_by(AuditLog.id)))


def settings() -> taxes.VatSettings:
    """The running app's VAT settings."""
    return taxes.current_settings()


# --- the service -----------------------------------------------------------------------------------


def test_a_subscriber_who_moved_pays_the_new_countrys_vat_from_the_next_invoice_only(
    plans: dict[str, Plan],
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    clock: FixedClock,
) -> None:
    reader = german_subscriber(session, gateway, stripe, clock)
    subscription = only_subscription(session)
    first = session.scalars(select(Invoice)).one()

    change = reader_country.change_country(
        session, gateway, reader, "fr", confirmed=True, now=clock.now(), settings=settings()
    )
    session.commit()

    assert (change.before, change.after, change.changed) == ("DE", "FR", True)
    assert (change.rate_before, change.rate_after, change.kind_after) == (
        Decimal("7"),
        Decimal("2.1"),
        TaxKind.OSS,
    )
    assert change.applies_from == subscription.current_period_end
    customer = session.scalars(select(Customer)).one()
    assert (customer.country, customer.declared_country, customer.card_country) == (
        "FR",
        "FR",
        "DE",
    )
    assert customer.country_confirmed_at == clock.now()
    assert reader.country == "FR"
    assert gateway.retrieve_customer(customer.stripe_id).country == "FR"
    french = session.get_one(TaxRate, only_subscription(session).tax_rate_id)
    assert (french.country, Decimal(french.percentage)) == ("FR", Decimal("2.1"))
    assert gateway.retrieve_subscription(subscription.stripe_id).tax_rate_ids == (french.stripe_id,)
    upcoming = gateway.preview_next_invoice(customer.stripe_id, subscription.stripe_id)
    assert (upcoming.total, upcoming.tax) == (1200, expected_tax(1200, Decimal("2.1")))
    session.expire_all()
    assert (session.get_one(Invoice, first.id).tax, first.tax_country) == (79, "DE")
    assert audit_actions(session)[-3:] == [
        "vat.country_confirmed",
        "vat.rate_changed",
        "account.country_changed",
    ]
    entry = session.scalars(
        select(AuditLog).where(AuditLog.action == "account.country_changed")
    ).one()
    assert entry.actor_id == reader.id
    assert entry.details == {
        "before": "DE",
        "after": "FR",
        "evidence": {
            "declared_country": "FR",
            "card_country": "DE",
            "agrees": False,
            "confirmed_by_reader": True,
        },
        "rate_before": "7",
        "rate_after": "2.1",
        "applies_from": subscription.current_period_end.isoformat(),
    }


def test_a_country_the_card_contradicts_changes_nothing_until_the_reader_confirms_it(
    plans: dict[str, Plan],
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    clock: FixedClock,
) -> None:
    reader = german_subscriber(session, gateway, stripe, clock)
    subscription = only_subscription(session)
    before = audit_actions(session)

    with pytest.raises(taxes.CountryUnconfirmed) as refused:
        reader_country.change_country(
            session, gateway, reader, "FR", confirmed=False, now=clock.now(), settings=settings()
        )

    assert refused.value.field == "country"
    assert (refused.value.evidence.declared, refused.value.evidence.card) == ("FR", "DE")
    session.rollback()
    customer = session.scalars(select(Customer)).one()
    assert (customer.country, reader.country) == ("DE", "DE")
    assert gateway.retrieve_customer(customer.stripe_id).country == "DE"
    german = session.get_one(TaxRate, only_subscription(session).tax_rate_id)
    assert gateway.retrieve_subscription(subscription.stripe_id).tax_rate_ids == (german.stripe_id,)
    assert audit_actions(session) == before


def test_moving_to_the_cards_country_needs_no_confirmation_and_outside_the_eu_drops_the_vat(
    plans: dict[str, Plan],
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    clock: FixedClock,
) -> None:
    reader = german_subscriber(session, gateway, stripe, clock)
    subscription = only_subscription(session)
    reader_country.change_country(
        session, gateway, reader, "FR", confirmed=True, now=clock.now(), settings=settings()
    )

    home = reader_country.change_country(
        session, gateway, reader, "DE", confirmed=False, now=clock.now(), settings=settings()
    )
    customer = session.scalars(select(Customer)).one()
    assert (home.rate_after, customer.country_confirmed_at) == (Decimal("7"), None)

    away = reader_country.change_country(
        session, gateway, reader, "CH", confirmed=True, now=clock.now(), settings=settings()
    )
    session.commit()

    assert (away.rate_after, away.kind_after) == (Decimal(0), TaxKind.OUTSIDE_EU)
    assert only_subscription(session).tax_rate_id is None
    assert gateway.retrieve_subscription(subscription.stripe_id).tax_rate_ids == ()


def test_a_reader_without_a_subscription_changes_only_the_country_a_later_one_is_taxed_by(
    plans: dict[str, Plan], session: Session, gateway: StripeGateway, clock: FixedClock
) -> None:
    reader = factories.reader(email="greta@example.org", country="DE")
    session.commit()

    change = reader_country.change_country(
        session, gateway, reader, "IT", confirmed=False, now=clock.now(), settings=settings()
    )
    session.commit()

    assert (change.before, change.after, change.applies_from) == ("DE", "IT", None)
    assert change.evidence is None
    assert reader.country == "IT"
    assert session.scalars(select(Customer)).all() == []
    assert audit_actions(session) == ["account.country_changed"]


def test_changing_to_the_country_the_reader_already_lives_in_changes_nothing(
    plans: dict[str, Plan],
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    clock: FixedClock,
) -> None:
    reader = german_subscriber(session, gateway, stripe, clock)
    before = audit_actions(session)

    change = reader_country.change_country(
        session, gateway, reader, "DE", confirmed=False, now=clock.now(), settings=settings()
    )

    assert not change.changed
    assert audit_actions(session) == before


@pytest.mark.parametrize("value", ["", "D", "DEU", "1A", "ÄÖ"])
def test_a_country_code_that_is_not_two_letters_is_refused_naming_the_field(value: str) -> None:
    with pytest.raises(ValidationFailed) as refused:
        reader_country.clean_country(value)

    assert refused.value.field == "country"


# --- the page ----------------------------------------------------------------------------------------


def text(response: Any) -> str:
    """The page as a reader reads it."""
    page = re.sub(r"<(script|style)\b.*?</\1>", " ", response.get_data(as_text=True), flags=re.S)
    return html.unescape(" ".join(re.sub(r"<[^>]+>", " ", page).split()))


@pytest.fixture
def browser(
    app: Flask,
    plans: dict[str, Plan],
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    clock: FixedClock,
) -> FlaskClient:
    """A browser in which the German subscriber is logged in."""
    reader = german_subscriber(session, gateway, stripe, clock)
    client = app.test_client()
    login(client, reader)
    return client


def test_the_account_page_shows_the_country_and_links_to_changing_it(
    browser: FlaskClient,
) -> None:
    page = browser.get("/account")

    assert "Country you live in Germany" in text(page)
    assert 'href="/account/country"' in page.get_data(as_text=True)


def test_the_country_page_says_what_a_change_does_and_from_when(
    browser: FlaskClient, session: Session
) -> None:
    page = browser.get("/account/country")

    words = text(page)
    assert page.status_code == 200
    assert "You live in Germany for us: your price includes Germany's VAT of 7 %" in words
    next_invoice = long_date(only_subscription(session).current_period_end)
    assert f"A change applies from your next invoice, on {next_invoice}" in words
    assert "Invoices already issued keep their VAT." in words
    assert 'name="csrf_token"' in page.get_data(as_text=True)


def test_a_move_the_card_contradicts_is_confirmed_on_the_page_then_applies_from_the_next_invoice(
    browser: FlaskClient, session: Session, gateway: StripeGateway
) -> None:
    asked = post_form(browser, "/account/country", {"country": "FR"})

    assert asked.status_code == 409
    words = text(asked)
    assert "Your card was issued in Germany. VAT is charged where you live" in words
    assert 'data-field="confirm"' in asked.get_data(as_text=True)
    assert session.scalars(select(Customer)).one().country == "DE"

    done = post_form(browser, "/account/country", {"country": "FR", "confirm": "y"})

    assert done.status_code == 302
    assert done.headers["Location"].endswith("/account")
    account = text(browser.get("/account"))
    next_invoice = long_date(only_subscription(session).current_period_end)
    assert (
        f"Your country is now France. From your next invoice, on {next_invoice}, your price "
        "includes France's VAT of 2.1 % instead of 7 %" in account
    )
    assert "Country you live in France" in account
    session.expire_all()
    subscription = session.scalars(select(Subscription)).one()
    assert session.get_one(TaxRate, subscription.tax_rate_id).country == "FR"


def test_the_confirm_box_the_card_contradicts_is_marked_invalid_and_tied_to_its_error(
    browser: FlaskClient,
) -> None:
    asked = post_form(browser, "/account/country", {"country": "FR"})

    assert asked.status_code == 409
    page = asked.get_data(as_text=True)
    assert "Please correct the highlighted field." in page
    box = re.search(r'<input[^>]*name="confirm"[^>]*>', page)
    assert box is not None
    assert 'aria-invalid="true"' in box.group(0)
    assert 'aria-describedby="confirm-error"' in box.group(0)
    assert re.search(r'class="field has-error[^"]*"[^>]*data-confirm-country', page)


def test_a_country_not_on_the_list_is_refused_on_the_page_naming_the_field(
    browser: FlaskClient, session: Session
) -> None:
    refused = post_form(browser, "/account/country", {"country": "QQ"})

    assert refused.status_code == 400
    assert 'data-field="country"' in refused.get_data(as_text=True)
    assert "Choose your country from the list." in text(refused)
    assert session.scalars(select(Customer)).one().country == "DE"


def test_a_country_change_without_the_forms_csrf_token_is_refused(
    browser: FlaskClient, session: Session
) -> None:
    refused = browser.post("/account/country", data={"country": "AT"})

    assert refused.status_code == 400
    session.expire_all()
    assert session.scalars(select(Customer)).one().country == "DE"


def test_an_unchanged_country_says_nothing_changed(browser: FlaskClient, clock: FixedClock) -> None:
    done = post_form(browser, "/account/country", {"country": "DE"})

    assert done.status_code == 302
    assert "You already live in Germany for us: nothing changed." in text(browser.get("/account"))
