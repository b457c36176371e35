"""A reader's way to the free trial, in a real browser: sign up, verify by mail, start the trial.

And the rule the trial hangs on: one per person, so a Gmail alias of an address that had a trial
(dots moved, a plus-tag added) is refused a second one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlencode

import pytest
from playwright.sync_api import Page, expect

from tests.browser import LiveServer
from tests.factories import PASSWORD

pytestmark = pytest.mark.browser

Screenshot = Callable[[Page, str], Path]
ACCOUNT_URL = re.compile(r"/account/?$")


def sign_up(page: Page, email: str, *, name: str = "First Last", country: str = "BE") -> None:
    """Create an account through the sign-up form; the reader lands on "Check your inbox"."""
    page.goto("/signup")
    page.locator("[name=email]").fill(email)
    page.locator("[name=password]").fill(PASSWORD)
    page.locator("[name=name]").fill(name)
    page.locator("select[name=country]").select_option(country)
    page.get_by_role("button", name="Create account").click()
    expect(page).to_have_url(re.compile(r"/verify-email/?$"))
    expect(page.get_by_text("Check your inbox")).to_be_visible()


def verify_from_outbox(page: Page, live_server: LiveServer, email: str) -> None:
    """Follow the verification link of the newest mail to ``email`` in the dev outbox."""
    page.goto("/dev/outbox?" + urlencode({"to": email.lower()}))
    link = page.locator('a[href*="/verify-email?token="]').first
    expect(link).to_be_visible()
    assert (link.get_attribute("href") or "").startswith(live_server.at("/verify-email?token="))
    link.click()
    expect(page).to_have_url(ACCOUNT_URL)


def log_out(page: Page) -> None:
    """Log out with the button in the header."""
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("button", name="Log out")).to_have_count(0)


def start_trial(page: Page) -> None:
    """Start the free trial from the trial page; the reader is sent back to their account."""
    page.goto("/trial")
    page.get_by_role("button", name="Start free trial").click()
    expect(page).to_have_url(ACCOUNT_URL)


def test_a_new_reader_signs_up_verifies_their_email_and_starts_a_free_trial(
    page: Page, live_server: LiveServer, screenshot: Screenshot
) -> None:
    sign_up(page, "first.last@gmail.com")
    verify_from_outbox(page, live_server, "first.last@gmail.com")
    start_trial(page)

    expect(page.get_by_text("14 days left")).to_be_visible()
    expect(page.locator("[data-reason]").first).to_have_attribute("data-reason", "trial")
    screenshot(page, "account-on-trial")


def test_the_same_person_gets_no_second_trial_with_a_gmail_alias(
    page: Page, live_server: LiveServer, screenshot: Screenshot
) -> None:
    sign_up(page, "first.last@gmail.com")
    verify_from_outbox(page, live_server, "first.last@gmail.com")
    start_trial(page)
    log_out(page)

    sign_up(page, "First.Last+x@gmail.com", name="First Again")
    verify_from_outbox(page, live_server, "first.last+x@gmail.com")
    page.goto("/trial")

    refusal = page.locator('.error[role="alert"]')
    expect(refusal).to_be_visible()
    expect(refusal).to_contain_text("already used")
    expect(page.get_by_role("button", name="Start free trial")).to_have_count(0)
    screenshot(page, "trial-refused")

    page.goto("/account")
    expect(page.get_by_text(re.compile(r"\bdays? left\b"))).to_have_count(0)
    expect(page.locator("[data-reason]").first).to_have_attribute("data-reason", "none")
    screenshot(page, "second-account")
