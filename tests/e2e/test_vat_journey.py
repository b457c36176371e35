"""VAT in a real browser against localstripe: the same price in Germany and in Belgium, different
VAT inside; a card from another country makes the reader say where they live; an organisation's
admin changes its country and VAT number, and a wrong number is refused next to its field."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.clock import FixedClock
from billing.gateway import StripeGateway
from billing.models import AuditLog, Customer, Group, Invoice, Subscription
from billing.services import groups
from billing.views.payments import long_date
from tests import factories
from tests.browser import LiveServer
from tests.e2e.test_subscribe_journey import DONE_URL, fill_card, log_in
from tests.payments_support import ministry_group, plans_on_sale
from tests.stripe_server import LocalstripeServer
from tests.test_group_vat import stripe_tax_ids
from tests.test_views_payments import create_plans

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("stripe"), pytest.mark.wall_clock]

Screenshot = Callable[[Page, str], Path]
GERMAN_CARD = "4000002760000016"
BELGIAN_CARD = "4000000560000004"
FRENCH_CARD = "4000002500000003"
AUSTRIAN_VAT_ID = "ATU13585627"
WRONG_CHECK_DIGIT = "NL004495446B01"
IN_AUSTRIA = ("AT", AUSTRIAN_VAT_ID, AUSTRIAN_VAT_ID, "AT", "reverse", [AUSTRIAN_VAT_ID])
"""What :func:`tax_details_everywhere` finds for an organisation reverse-charged in Austria."""


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    """A publisher in Belgium."""
    app_config["PUBLISHER_COUNTRY"] = "BE"
    return app_config


@pytest.fixture
def on_sale(
    stripe: LocalstripeServer, live_server: LiveServer, gateway: StripeGateway, session: Session
) -> None:
    """The monthly and yearly plans, on sale in localstripe and in the database."""
    create_plans(gateway, session)


def subscribe_in_browser(page: Page, email: str, card: str) -> None:
    """Log in, keep the prefilled country, pay monthly with ``card``."""
    log_in(page, email)
    page.goto("/subscribe")
    page.get_by_role("radio", name=re.compile("Monthly")).check()
    fill_card(page, card)
    page.get_by_role("button", name="Subscribe").click()


def test_readers_in_germany_and_belgium_pay_the_same_price_with_different_vat(
    on_sale: None,
    page: Page,
    session: Session,
    clock: FixedClock,
    screenshot: Screenshot,
    live_server: LiveServer,
) -> None:
    for email, country in (("greta@example.org", "DE"), ("bart@example.org", "BE")):
        factories.reader(email=email, country=country, created_at=clock.now() - timedelta(days=60))
    session.commit()

    subscribe_in_browser(page, "greta@example.org", GERMAN_CARD)
    expect(page).to_have_url(DONE_URL)
    page.goto("/account/invoices")
    expect(page.locator("[data-vat]")).to_have_text("€0.79 (7% DE)")
    expect(page.locator("[data-amount]")).to_have_text("€12.00")
    screenshot(page, "invoices-germany")
    page.context.clear_cookies()

    subscribe_in_browser(page, "bart@example.org", BELGIAN_CARD)
    expect(page).to_have_url(DONE_URL)
    page.goto("/account/invoices")
    expect(page.locator("[data-vat]")).to_have_text("€0.00 (0% BE)")
    expect(page.locator("[data-amount]")).to_have_text("€12.00")
    screenshot(page, "invoices-belgium")

    session.expire_all()
    evidence = [i.tax_evidence for i in session.scalars(select(Invoice).order_by(Invoice.id))]
    assert [(e or {}).get("card_country") for e in evidence] == ["DE", "BE"]


def test_a_card_from_another_country_makes_the_reader_say_where_they_live(
    on_sale: None, page: Page, session: Session, clock: FixedClock, screenshot: Screenshot
) -> None:
    factories.reader(
        email="greta@example.org", country="DE", created_at=clock.now() - timedelta(days=60)
    )
    session.commit()

    subscribe_in_browser(page, "greta@example.org", FRENCH_CARD)

    expect(page.get_by_role("heading", name="Where do you live?")).to_be_visible()
    expect(page.locator("[data-evidence]")).to_contain_text(
        "You told us you live in Germany, but your card was issued in France."
    )
    screenshot(page, "confirm-country")
    page.get_by_label("I live in Germany").check()
    page.get_by_role("button", name="Confirm and subscribe").click()

    expect(page).to_have_url(DONE_URL)
    page.goto("/account/invoices")
    expect(page.locator("[data-vat]")).to_have_text("€0.79 (7% DE)")
    session.expire_all()
    invoice = session.scalars(select(Invoice)).one()
    assert invoice.tax_evidence == {
        "declared_country": "DE",
        "card_country": "FR",
        "agrees": False,
        "confirmed_by_reader": True,
    }


def test_a_reader_who_moved_changes_their_country_and_is_told_from_when_it_applies(
    on_sale: None, page: Page, session: Session, clock: FixedClock, screenshot: Screenshot
) -> None:
    factories.reader(
        email="greta@example.org", country="DE", created_at=clock.now() - timedelta(days=60)
    )
    session.commit()
    subscribe_in_browser(page, "greta@example.org", GERMAN_CARD)
    expect(page).to_have_url(DONE_URL)

    page.goto("/account")
    page.get_by_role("link", name="Change country").click()
    expect(page.locator("[data-current-country]")).to_contain_text("Germany's VAT of 7 %")
    expect(page.locator("[data-applies-from]")).to_contain_text("from your next invoice, on")
    page.get_by_label("The country you live in now").select_option("FR")
    page.get_by_role("button", name="Change my country").click()

    confirm = page.get_by_label(re.compile("Yes, I live in this country"))
    expect(page.locator("[data-field=confirm]")).to_contain_text("Your card was issued in Germany")
    screenshot(page, "change-country-confirm")
    confirm.check()
    page.get_by_role("button", name="Change my country").click()

    expect(
        page.get_by_text(re.compile("Your country is now France. From your next invoice"))
    ).to_be_visible()
    expect(page.locator("[data-country]")).to_have_text("France")
    screenshot(page, "change-country-done")
    page.goto("/account/invoices")
    expect(page.locator("[data-vat]")).to_have_text("€0.79 (7% DE)")  # issued: keeps its VAT


def tax_details_everywhere(
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    group: Group,
    customer: Customer,
) -> tuple[Any, ...]:
    """The organisation's country and VAT number as stored, its customer's VAT number, and on
    Stripe the customer's country, ``tax_exempt`` and tax ids."""
    session.expire_all()
    on_stripe = gateway.retrieve_customer(customer.stripe_id)
    return (
        group.country,
        group.vat_id,
        customer.vat_id,
        on_stripe.country,
        on_stripe.tax_exempt,
        stripe_tax_ids(stripe, customer),
    )


def test_a_group_admin_changes_the_country_and_vat_number_and_a_wrong_number_changes_nothing(
    live_server: LiveServer,
    page: Page,
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    clock: FixedClock,
    screenshot: Screenshot,
) -> None:
    plans_on_sale(session, gateway)
    admin = factories.reader(email="boss@ministry.example", name="The Boss")
    session.commit()
    group = ministry_group(
        session,
        gateway,
        admin,
        by_invoice=True,
        rules=groups.GroupRules.from_config(live_server.app.config),
        now=clock.now(),
    )
    session.commit()
    renews = long_date(session.scalars(select(Subscription)).one().current_period_end)
    customer = session.scalars(select(Customer).where(Customer.group_id == group.id)).one()
    in_germany = ("DE", None, None, "DE", "none", [])
    assert tax_details_everywhere(session, gateway, stripe, group, customer) == in_germany

    log_in(page, "boss@ministry.example")
    page.goto(f"/groups/{group.public_id}")
    taxed = page.locator("[data-tax-now]")
    expect(taxed).to_have_attribute("data-tax-now", "oss")
    expect(taxed).to_contain_text("Example Ministry is in Germany, without a VAT number")
    country = page.get_by_label("Country", exact=True)
    vat_id = page.get_by_label("VAT number (empty: none)")
    expect(country).to_have_value("DE")
    country.select_option("AT")
    vat_id.fill("atu 135 856 27")
    screenshot(page, "tax-form")
    page.get_by_role("button", name="Save country and VAT number").click()

    expect(page.locator(".flash-success")).to_have_text(
        f"Saved. From your next invoice, on {renews}, your seats are invoiced with reverse charge "
        "(0 % VAT: you account for it) instead of Germany's VAT of 7 % on top of the net price. "
        "Invoices already issued keep their VAT."
    )
    expect(taxed).to_have_attribute("data-tax-now", "reverse_charge")
    expect(taxed).to_contain_text(
        f"Example Ministry is in Austria with the VAT number {AUSTRIAN_VAT_ID}"
    )
    expect(country).to_have_value("AT")
    expect(vat_id).to_have_value(AUSTRIAN_VAT_ID)
    assert tax_details_everywhere(session, gateway, stripe, group, customer) == IN_AUSTRIA

    country.select_option("NL")
    vat_id.fill(WRONG_CHECK_DIGIT)
    page.get_by_role("button", name="Save country and VAT number").click()

    expect(vat_id).to_have_attribute("aria-invalid", "true")
    error = page.locator("[data-field=vat_id]")
    expect(error).to_have_text(
        f"“{WRONG_CHECK_DIGIT}” is not a valid EU VAT number: "
        "its check digit is wrong (a typing mistake?)."
    )
    expect(vat_id).to_have_accessible_description(re.compile("is not a valid EU VAT number"))
    expect(vat_id).to_have_value(WRONG_CHECK_DIGIT)
    expect(country).to_have_value("NL")
    expect(taxed).to_contain_text(
        f"Example Ministry is in Austria with the VAT number {AUSTRIAN_VAT_ID}"
    )
    expect(page.locator(".flash")).to_have_count(0)
    screenshot(page, "tax-error")
    assert tax_details_everywhere(session, gateway, stripe, group, customer) == IN_AUSTRIA
    changes = session.scalars(select(AuditLog).where(AuditLog.action == "group.tax_changed"))
    assert [c.details["country_after"] for c in changes] == ["AT"]
