"""A visitor of the demo newspaper meets the paywall, starts a free trial on Tollgate and comes back
to read; when the trial is over, the article is paywalled again.

Two real servers: Tollgate (``live_server``) and the newspaper (``examples/newspaper``) on its own
port, both reading the test's clock, so moving it ends the trial and expires the tokens at once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlencode

import pytest
from flask import Flask
from playwright.sync_api import Page, expect
from sqlalchemy.orm import Session

from billing.clock import FixedClock
from billing.services import api_clients
from tests import factories
from tests.browser import LiveServer, serve
from tests.factories import PASSWORD
from tests.test_newspaper import load_newspaper

pytestmark = pytest.mark.browser

Screenshot = Callable[[Page, str], Path]
ARTICLE = "/articles/veldoria-coalition-talks"


@pytest.fixture
def newspaper(live_server: LiveServer, session: Session, clock: FixedClock) -> Iterator[LiveServer]:
    """The newspaper on a free port, registered with Tollgate as an API client for its origin."""

    def build(url: str) -> Flask:
        client, key, token_key = api_clients.create(
            session,
            name="The Daily Meridian",
            scopes=[api_clients.SCOPE_ENTITLEMENTS_READ],
            allowed_origins=[url],
            created_by=None,
            now=clock.now(),
        )
        session.commit()
        return load_newspaper().create_app(  # type: ignore[no-any-return]
            {
                "TOLLGATE_URL": live_server.url,
                "TOLLGATE_CLIENT_ID": client.public_id,
                "TOLLGATE_API_KEY": key,
                "TOLLGATE_TOKEN_KEYS": [str(token_key)],
                "SECRET_KEY": "newspaper-e2e-secret",
                "CLOCK": clock,
            }
        )

    with serve(build, "the newspaper") as paper:
        yield paper


def test_a_visitor_starts_a_trial_from_the_paywall_reads_and_is_paywalled_when_it_ends(
    page: Page,
    live_server: LiveServer,
    newspaper: LiveServer,
    clock: FixedClock,
    screenshot: Screenshot,
) -> None:
    article_url = re.compile(re.escape(newspaper.at(ARTICLE)) + "$")
    paywall = page.locator("[data-paywall]")
    body = page.locator("[data-article-body]")

    page.goto(newspaper.at(ARTICLE))
    expect(paywall).to_be_visible()
    expect(paywall).to_contain_text("Get instant access to all articles and 20 years of archives")
    expect(body).to_have_count(0)
    screenshot(page, "1-paywall")

    page.get_by_role("link", name="Start your free trial").click()
    expect(page).to_have_url(re.compile(re.escape(live_server.at("/signup?next="))))
    screenshot(page, "2-signup")
    page.locator("[name=email]").fill("new.reader@example.org")
    page.locator("[name=password]").fill(PASSWORD)
    page.locator("[name=name]").fill("New Reader")
    page.locator("select[name=country]").select_option("BE")
    page.get_by_role("button", name="Create account").click()
    expect(page).to_have_url(re.compile(r"/verify-email\?next="))
    expect(page.get_by_text("Check your inbox")).to_be_visible()

    page.goto("/dev/outbox?" + urlencode({"to": "new.reader@example.org"}))
    page.locator('a[href*="/verify-email?token="]').first.click()
    expect(page).to_have_url(re.compile(r"/trial\?next="))
    screenshot(page, "3-trial")
    page.get_by_role("button", name="Start free trial").click()

    expect(page).to_have_url(article_url)
    expect(body).to_be_visible()
    expect(page.locator("[data-access]")).to_have_attribute("data-access", "trial")
    expect(page.locator("[data-access]")).to_contain_text("until 9 December 2026")
    expect(paywall).to_have_count(0)
    screenshot(page, "4-reading")

    page.reload()
    expect(body).to_be_visible()

    clock.advance(days=15)  # past the trial's end, and long past the token's
    visited: list[str] = []
    page.on("framenavigated", lambda frame: visited.append(frame.url))
    page.on("request", lambda request: visited.append(request.url))
    page.reload()  # renewed through /access?prompt=none: back with #tollgate_error, no token
    expect(page).to_have_url(article_url)  # token.js took the error out of the address
    expect(paywall).to_be_visible()
    expect(paywall).not_to_have_attribute("data-reason", re.compile(".*"))
    expect(body).to_have_count(0)
    assert any("prompt=none" in url for url in visited), visited
    assert any(url.endswith("#tollgate_error=access_denied") for url in visited), visited
    screenshot(page, "5-paywalled-again")


def test_logging_out_on_the_newspaper_forgets_its_token_and_logs_out_of_tollgate(
    page: Page,
    live_server: LiveServer,
    newspaper: LiveServer,
    session: Session,
    clock: FixedClock,
    screenshot: Screenshot,
) -> None:
    reader = factories.reader(email="subscriber@example.org")
    factories.SubscriptionFactory(
        customer=factories.CustomerFactory(reader=reader),
        current_period_start=clock.now(),
        current_period_end=clock.now() + timedelta(days=30),
    )
    session.commit()
    body = page.locator("[data-article-body]")
    page.goto(live_server.at("/login"))
    page.locator("[name=email]").fill(reader.email)
    page.locator("[name=password]").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.goto(newspaper.at(ARTICLE))
    page.get_by_role("link", name="Log in").first.click()
    expect(body).to_be_visible()
    expect(page.locator("[data-access]")).to_contain_text("You are reading as a subscriber.")
    expect(page.locator("[data-account-link]")).to_have_attribute(
        "href", live_server.at("/account")
    )
    screenshot(page, "1-reading-with-links")

    page.locator("[data-logout]").click()
    expect(page).to_have_url(live_server.at("/logout"))
    expect(page.get_by_role("heading", name=re.compile("Log out of your"))).to_be_visible()
    screenshot(page, "2-log-out-of-tollgate")
    page.locator("#main").get_by_role("button", name="Log out").click()
    expect(page.get_by_text("You are logged out.")).to_be_visible()

    page.goto(newspaper.at(ARTICLE))
    expect(page.locator("[data-paywall]")).to_be_visible()
    expect(body).to_have_count(0)
    expect(page.locator("[data-logout]")).to_have_count(0)
    screenshot(page, "3-paywalled-after-log-out")
