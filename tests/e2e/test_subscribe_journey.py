"""A reader's way to a paid subscription, in a real browser against localstripe.

The card is typed into the card form that Stripe.js mounts (localstripe's stand-in renders plain
inputs), the page's script saves it through a SetupIntent, and the server subscribes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy.orm import Session

from billing.clock import FixedClock
from billing.gateway import StripeGateway
from billing.models import Reader
from tests import factories
from tests.browser import LiveServer
from tests.stripe_server import LocalstripeServer
from tests.test_views_payments import create_plans

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("stripe"), pytest.mark.wall_clock]

Screenshot = Callable[[Page, str], Path]
ACCOUNT_URL = re.compile(r"/account/?$")
DONE_URL = re.compile(r"/subscribe/done$")
VISA = "4242424242424242"
DECLINED_ON_CHARGE = "4000000000000341"
THREE_D_SECURE = "4000008260003178"


@pytest.fixture
def on_sale(
    stripe: LocalstripeServer, live_server: LiveServer, gateway: StripeGateway, session: Session
) -> None:
    """The monthly and yearly plans, on sale in localstripe and in the database."""
    create_plans(gateway, session)


def make_reader(
    session: Session, clock: FixedClock, email: str, *, trial_started: datetime | None = None
) -> Reader:
    """A verified reader (with a trial that started at ``trial_started``), committed."""
    reader = factories.reader(email=email, created_at=clock.now() - timedelta(days=60))
    if trial_started is not None:
        factories.TrialFactory(reader=reader, started_at=trial_started)
    session.commit()
    return reader


def log_in(page: Page, email: str) -> None:
    """Log in through the form; the reader lands on their account."""
    page.goto("/login")
    page.locator("[name=email]").fill(email)
    page.locator("[name=password]").fill(factories.PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(ACCOUNT_URL)


def pay_with_card(page: Page, number: str, *, plan: str = "Monthly") -> None:
    """Choose ``plan`` on /subscribe, type the card into the card element and subscribe."""
    page.goto("/subscribe")
    page.get_by_role("radio", name=re.compile(plan)).check()
    fill_card(page, number)
    page.get_by_role("button", name="Subscribe").click()


def fill_card(page: Page, number: str) -> None:
    """Type a card into the inputs localstripe's Stripe.js renders in the card element."""
    card = page.locator("#card-element")
    expect(card.locator("input").first).to_be_visible()
    card.get_by_label("Card number").fill(number)
    card.get_by_label("Expiry month (MM)").fill("12")
    card.get_by_label("Expiry year (YY)").fill("34")
    card.get_by_label("Security code (CVC)").fill("123")
    card.get_by_label("Postcode").fill("1000")


def test_a_reader_whose_trial_has_ended_subscribes_by_card_and_can_read_at_once(
    on_sale: None, page: Page, session: Session, clock: FixedClock, screenshot: Screenshot
) -> None:
    make_reader(
        session, clock, "ended.trial@example.org", trial_started=clock.now() - timedelta(days=30)
    )
    log_in(page, "ended.trial@example.org")
    page.goto("/subscribe")
    expect(page.get_by_text("Monthly — €12.00 a month")).to_be_visible()
    expect(page.get_by_text("Yearly — €120.00 a year")).to_be_visible()
    expect(page.get_by_text("Prices include VAT where it applies.")).to_be_visible()
    screenshot(page, "subscribe-page")

    pay_with_card(page, VISA)

    expect(page).to_have_url(DONE_URL)
    expect(page.get_by_role("heading", name="Thank you for subscribing")).to_be_visible()
    expect(page.get_by_text("Monthly — €12.00 a month")).to_be_visible()
    screenshot(page, "confirmation")
    page.get_by_role("link", name="Go to your account").click()
    expect(page).to_have_url(ACCOUNT_URL)
    expect(page.locator(".subscription-status")).to_have_text("Active", timeout=5000)
    expect(page.locator("[data-reason]").first).to_have_attribute(
        "data-reason", "subscription", timeout=5000
    )
    expect(page.get_by_text("Visa ending in 4242")).to_be_visible()
    screenshot(page, "account-subscribed")


def test_a_reader_on_a_trial_is_told_when_the_card_is_first_charged(
    on_sale: None, page: Page, session: Session, clock: FixedClock, screenshot: Screenshot
) -> None:
    reader = make_reader(
        session, clock, "on.trial@example.org", trial_started=clock.now() - timedelta(days=5)
    )
    assert reader.trial is not None
    trial_end = f"{reader.trial.ends_at.day} {reader.trial.ends_at:%B %Y}"
    log_in(page, "on.trial@example.org")

    pay_with_card(page, VISA, plan="Yearly")

    expect(page).to_have_url(DONE_URL)
    expect(page.locator("[data-first-charge]")).to_have_text(
        f"Your free trial runs until {trial_end}. "
        f"Your card will first be charged €120.00 on {trial_end}."
    )
    screenshot(page, "confirmation-on-trial")
    page.get_by_role("link", name="Go to your account").click()
    expect(page.locator(".subscription-status")).to_have_text(f"Starts on {trial_end}")
    expect(page.locator("[data-reason]").first).to_have_attribute("data-reason", "trial")
    screenshot(page, "account-scheduled")


def test_a_reader_whose_payment_fails_sees_the_banner_and_fixes_it_with_another_card(
    on_sale: None, page: Page, session: Session, clock: FixedClock, screenshot: Screenshot
) -> None:
    make_reader(session, clock, "declined@example.org")
    log_in(page, "declined@example.org")

    pay_with_card(page, DECLINED_ON_CHARGE)
    expect(page.locator("#card-errors")).to_contain_text("declined")
    expect(page.get_by_role("button", name="Pay with this card")).to_be_visible()
    screenshot(page, "subscribe-declined")
    page.goto("/account")

    banner = page.locator("[data-banner=payment-problem]")
    expect(banner).to_contain_text("Your last payment failed. Update your card to keep reading.")
    link = banner.get_by_role("link", name="Update your card")
    expect(link).to_have_attribute("href", "/account/card")
    expect(page.locator(".subscription-status")).to_have_text("Payment failed")
    screenshot(page, "account-payment-failed")

    link.click()
    expect(page.get_by_role("heading", name="Update your card")).to_be_visible()
    fill_card(page, VISA)
    page.get_by_role("button", name="Save card").click()

    expect(page).to_have_url(ACCOUNT_URL)
    expect(page.locator("[data-banner=payment-problem]")).to_have_count(0)
    expect(page.locator(".subscription-status")).to_have_text("Active", timeout=5000)
    screenshot(page, "account-recovered")


def test_a_reader_whose_bank_refuses_3d_secure_is_told_and_subscribes_with_another_card(
    on_sale: None, page: Page, session: Session, clock: FixedClock, screenshot: Screenshot
) -> None:
    make_reader(session, clock, "three.d@example.org")
    log_in(page, "three.d@example.org")

    pay_with_card(page, THREE_D_SECURE)
    page.get_by_role("button", name="Complete authentication").click()  # saving the card

    expect(page.get_by_role("heading", name="Confirm your payment")).to_be_visible()
    page.get_by_role("button", name="Fail authentication").click()
    status = page.locator("[data-auth-status]")
    expect(status).to_contain_text("Your bank did not confirm the payment.")
    expect(page.get_by_role("button", name="Try again")).to_be_visible()
    screenshot(page, "authentication-failed")

    page.get_by_role("link", name="Use another card").click()
    expect(page.get_by_text("your subscription did not start")).to_be_visible()
    pay_with_card(page, VISA)

    expect(page).to_have_url(DONE_URL)
    page.get_by_role("link", name="Go to your account").click()
    expect(page.locator(".subscription-status")).to_have_text("Active")
