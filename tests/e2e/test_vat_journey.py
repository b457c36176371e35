"""VAT in a real browser against localstripe: the same price in Germany and in Belgium, different
VAT inside; a card from another country makes the reader say where they live."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.clock import FixedClock
from billing.gateway import StripeGateway
from billing.models import Invoice
from tests import factories
from tests.browser import LiveServer
from tests.e2e.test_subscribe_journey import DONE_URL, fill_card, log_in
from tests.stripe_server import LocalstripeServer
from tests.test_views_payments import create_plans

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("stripe")]

Screenshot = Callable[[Page, str], Path]
GERMAN_CARD = "4000002760000016"
BELGIAN_CARD = "4000000560000004"
FRENCH_CARD = "4000002500000003"


@pytest.fixture
def clock() -> FixedClock:
    """Real time, standing still: localstripe stamps its objects with the real clock."""
    return FixedClock(datetime.now(UTC))


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
