"""A new reader from the newspaper, in a real browser against localstripe: the publisher's brand all
the way, the price before the card form, a receipt after paying, an invoice with a number and a
PDF, a switch page that names the charge, and account pages that say what the next click does."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.clock import FixedClock
from billing.gateway import StripeGateway
from billing.models import Invoice, StaffRole
from billing.services import api_clients
from tests import factories
from tests.browser import LiveServer
from tests.conftest import BRAND, Outbox
from tests.e2e.test_subscribe_journey import log_in, make_reader
from tests.stripe_server import LocalstripeServer
from tests.test_views_payments import create_plans

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("stripe"), pytest.mark.wall_clock]

Screenshot = Callable[[Page, str], Path]
ACCOUNT_URL = re.compile(r"/account/?$")


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    """The app under the demo newspaper's brand."""
    return {**app_config, **BRAND}


@pytest.fixture
def on_sale(
    stripe: LocalstripeServer, live_server: LiveServer, gateway: StripeGateway, session: Session
) -> None:
    """The monthly and yearly plans, on sale in localstripe and in the database."""
    create_plans(gateway, session)


def expect_branded(page: Page) -> None:
    """The page carries the publication's name, home link and legal links, not Tollgate's."""
    expect(page.locator("[data-brand]")).to_have_attribute("href", "https://meridian.example")
    expect(page.locator("[data-brand]")).to_have_text("The Daily Meridian")
    footer = page.locator("[data-footer]")
    for label in ("Terms", "Privacy", "Imprint"):
        expect(footer.get_by_role("link", name=label)).to_be_visible()
    expect(footer.get_by_role("link", name="help@meridian.example")).to_be_visible()
    assert "Tollgate" not in page.title()


def type_card(page: Page, number: str) -> None:
    """Type a card as a reader would, key by key, spaces and all, into localstripe's card element."""
    card = page.locator("#card-element")
    expect(card.locator("input").first).to_be_visible()
    card.get_by_label("Card number").fill("")
    card.get_by_label("Card number").press_sequentially(number)
    expect(card.get_by_label("Card number")).to_have_value(number)
    card.get_by_label("Expiry month (MM)").fill("12")
    card.get_by_label("Expiry year (YY)").fill("34")
    card.get_by_label("Security code (CVC)").fill("123")
    card.get_by_label("Postcode").fill("1000")


def test_the_offers_page_shows_the_prices_in_the_publications_brand(
    on_sale: None,
    page: Page,
    live_server: LiveServer,
    session: Session,
    clock: FixedClock,
    screenshot: Screenshot,
) -> None:
    client, _key, _token_key = api_clients.create(
        session,
        name="The Daily Meridian",
        scopes=[api_clients.SCOPE_ENTITLEMENTS_READ],
        allowed_origins=["https://meridian.example"],
        created_by=None,
        now=clock.now(),
    )
    session.commit()
    query = {"client": client.public_id, "return_to": "https://meridian.example/article"}
    page.goto("/access?" + urlencode(query))

    expect_branded(page)
    prices = page.locator("[data-prices]")
    expect(prices.locator('[data-price="individual-monthly"]')).to_contain_text("€12.00 a month")
    expect(prices.locator('[data-price="individual-yearly"]')).to_contain_text("€120.00 a year")
    trial_end = clock.now() + timedelta(days=14)
    expect(page.locator("[data-trial-terms]")).to_contain_text(
        f"runs until {trial_end.day} {trial_end:%B %Y}"
    )
    screenshot(page, "offers")


def test_a_reader_pays_with_the_card_typed_with_spaces_and_gets_a_receipt_and_an_invoice_pdf(
    on_sale: None,
    page: Page,
    session: Session,
    clock: FixedClock,
    outbox: Outbox,
    screenshot: Screenshot,
) -> None:
    make_reader(session, clock, "paying@example.org")
    log_in(page, "paying@example.org")
    page.goto("/subscribe")
    expect_branded(page)
    page.get_by_role("radio", name=re.compile("Monthly")).check()
    type_card(page, "4242 4242 4242 4241")
    page.get_by_role("button", name="Subscribe").click()
    expect(page.locator("#card-errors")).to_have_text("Your card number is invalid.")
    screenshot(page, "card-number-invalid")

    type_card(page, "4242 4242 4242 4242")
    page.get_by_role("button", name="Subscribe").click()
    expect(page).to_have_url(re.compile(r"/subscribe/done$"))
    screenshot(page, "confirmation")

    invoice = session.scalars(select(Invoice)).one()
    assert invoice.number and re.fullmatch(r"[0-9A-F]{8}-0001", invoice.number)
    receipts = [m for m in outbox.all("paying@example.org") if m.subject.startswith("Your receipt")]
    assert [m.subject for m in receipts] == [
        f"Your receipt {invoice.number} from The Daily Meridian"
    ]
    assert "Amount paid: €12.00" in receipts[0].body and "VAT included:" in receipts[0].body

    page.goto("/account")
    expect(page.locator("[data-reason]").first).to_have_attribute("data-reason", "subscription")
    expect(page.locator("[data-trial]")).to_have_attribute("data-trial", "not-needed")
    expect(page.get_by_role("link", name="Start your free trial")).to_have_count(0)
    screenshot(page, "account-active-no-trial-offer")

    page.goto("/account/invoices")
    row = page.locator(f'[data-invoice="{invoice.stripe_id}"]')
    expect(row).to_contain_text(invoice.number)
    expect(row.locator("[data-vat]")).to_have_text("€0.00 (0% BE)")
    pdf = row.get_by_role("link", name=re.compile("PDF"))
    href = pdf.get_attribute("href")
    assert href is not None
    with urllib.request.urlopen(href, timeout=5) as answer:  # noqa: S310 - the test's localstripe
        assert answer.headers.get_content_type() == "application/pdf"
        assert answer.read().startswith(b"%PDF")
    screenshot(page, "invoices")


def test_the_switch_page_names_what_is_charged_now_and_later_and_the_credit_shows(
    on_sale: None,
    page: Page,
    session: Session,
    clock: FixedClock,
    screenshot: Screenshot,
) -> None:
    make_reader(session, clock, "switching@example.org")
    log_in(page, "switching@example.org")
    page.goto("/subscribe")
    page.get_by_role("radio", name=re.compile("Monthly")).check()
    type_card(page, "4242424242424242")
    page.get_by_role("button", name="Subscribe").click()
    expect(page).to_have_url(re.compile(r"/subscribe/done$"))

    page.goto("/account/subscription/switch")
    expect(page.locator("[data-charged-now]")).to_contain_text("€108.00")
    next_year = clock.now().replace(year=clock.now().year + 1)
    expect(page.locator("[data-next-charge]")).to_contain_text(
        f"€120.00 on {next_year.day} {next_year:%B %Y}"
    )
    screenshot(page, "switch-to-yearly")
    page.get_by_role("button", name="Yes, switch to yearly").click()
    expect(page).to_have_url(ACCOUNT_URL)

    page.goto("/account/subscription/switch")
    expect(page.locator("[data-charged-now]")).to_contain_text("€0.00")
    expect(page.locator("[data-credit-after]")).to_contain_text("€108.00")
    screenshot(page, "switch-back-to-monthly")
    page.get_by_role("button", name="Yes, switch to monthly").click()
    expect(page).to_have_url(ACCOUNT_URL)
    expect(page.locator("[data-credit]")).to_contain_text("€108.00")
    expect(page.locator("[data-next-charge]")).to_contain_text("€0.00")
    screenshot(page, "account-with-credit")


def test_a_declined_first_payment_says_payment_failed_on_the_account_page(
    on_sale: None,
    page: Page,
    session: Session,
    clock: FixedClock,
    screenshot: Screenshot,
) -> None:
    make_reader(
        session,
        clock,
        "declined.first@example.org",
        trial_started=clock.now() - timedelta(days=30),
    )
    log_in(page, "declined.first@example.org")
    page.goto("/subscribe")
    type_card(page, "4000 0000 0000 0341")
    page.get_by_role("button", name="Subscribe").click()
    expect(page.locator("#card-errors")).to_contain_text("declined")
    expect(page.locator(".form-errors")).to_have_count(0)
    screenshot(page, "subscribe-declined")

    page.goto("/account")
    expect(page.locator("[data-reason]").first).to_have_attribute("data-reason", "payment_failed")
    expect(page.locator("[data-reason]").first).to_contain_text("the payment failed")
    expect(page.locator("[data-banner=payment-problem]")).to_be_visible()
    screenshot(page, "account-payment-failed")


def test_error_pages_carry_the_brand(
    page: Page, live_server: LiveServer, screenshot: Screenshot
) -> None:
    response = page.goto("/no-such-page")
    assert response is not None and response.status == 404
    expect_branded(page)
    screenshot(page, "not-found")


def test_the_favicon_is_the_publications_initial(page: Page, live_server: LiveServer) -> None:
    page.goto("/login")
    href = page.locator('link[rel="icon"]').get_attribute("href")
    assert href == "/favicon.svg"
    icon = page.request.get(live_server.at(href))
    assert icon.headers["content-type"] == "image/svg+xml"
    assert 'fill="#8a1c1c"' in icon.text()


def test_nothing_overflows_the_dev_outbox_however_long_a_link(
    page: Page, live_server: LiveServer, session: Session, screenshot: Screenshot
) -> None:
    reader = factories.reader(email="long.links@example.org")
    session.commit()
    page.set_viewport_size({"width": 420, "height": 900})
    page.goto("/password/reset")
    page.locator("[name=email]").fill(reader.email)
    page.locator("#main form button[type=submit]").click()
    page.goto("/dev/outbox")
    expect(page.locator(".mail")).to_have_count(1)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 420, f"the page is {width}px wide in a 420px window"
    screenshot(page, "outbox-narrow")


def test_the_api_clients_table_keeps_its_actions_inside_the_page(
    page: Page, live_server: LiveServer, session: Session, clock: FixedClock, screenshot: Screenshot
) -> None:
    admin = factories.reader(email="admin@example.org", staff_role=StaffRole.ADMIN)
    api_clients.create(
        session,
        name="A content site with a rather long name",
        scopes=["entitlements:read", "tokens:issue", "readers:read"],
        allowed_origins=[
            "https://a-very-long-subdomain-of-the-newspaper.news.example.com",
            "https://another-quite-long-origin.example.org:8443",
        ],
        created_by=None,
        now=clock.now(),
    )
    session.commit()
    page.set_viewport_size({"width": 1024, "height": 900})
    page.goto("/login")
    page.locator("[name=email]").fill(admin.email)
    page.locator("[name=password]").fill(factories.PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.goto("/staff/api-clients")

    main = page.locator("#main").bounding_box()
    revoke = page.get_by_role("button", name=re.compile("^Revoke")).bounding_box()
    assert main is not None and revoke is not None
    assert revoke["x"] + revoke["width"] <= main["x"] + main["width"], (revoke, main)
    assert page.evaluate("document.documentElement.scrollWidth") <= 1024
    screenshot(page, "api-clients")
