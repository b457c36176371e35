"""An organisation's way to group access, in a real browser against localstripe and the newspaper.

The admin buys 3 seats with the test card, invites two colleagues, one accepts from the mail in
the outbox and reads on the demo newspaper; a further invite is refused while seats are full;
removing the member frees the seat; staff approve the office network, and a visitor from it reads
without logging in, which the admin and staff see as one IP session of the day, however often
that visitor reads.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from flask import Flask, Response, request, request_finished
from playwright.sync_api import Browser, Page, expect
from sqlalchemy.orm import Session

from billing.clock import FixedClock
from billing.gateway import StripeGateway
from billing.ip_session_counter import IpSessionCounter
from billing.models import StaffRole
from billing.services import api_clients
from tests import factories
from tests.browser import LiveServer, serve
from tests.e2e.test_subscribe_journey import fill_card, log_in
from tests.payments_support import plans_on_sale
from tests.stripe_server import LocalstripeServer
from tests.test_newspaper import load_newspaper

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("stripe"), pytest.mark.wall_clock]

Screenshot = Callable[[Page, str], Path]
ARTICLE = "/articles/veldoria-coalition-talks"
OFFICE = "81.2.69.0/24"
VISITOR = "81.2.69.10"


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    """IP sessions are written only when the test flushes them, never behind its back."""
    app_config["GROUP_IP_SESSIONS_FLUSH_INTERVAL"] = 86_400.0
    return app_config


@pytest.fixture
def ip_checks(live_server: LiveServer) -> Iterator[dict[str, list[str]]]:
    """Tollgate's answers to the content site's anonymous checks (``GET /api/v1/entitlement?ip=``):
    the reasons given, in order, per address asked about."""
    api: Flask = live_server.app.extensions["api_app"]
    answered: defaultdict[str, list[str]] = defaultdict(list)

    def note(_sender: Flask, response: Response, **_extra: Any) -> None:
        if request.endpoint == "api.anonymous_entitlement":
            answered[request.args["ip"]].append(response.get_json()["reason"])

    request_finished.connect(note, api, weak=False)
    yield answered
    request_finished.disconnect(note, api)


@pytest.fixture
def newspaper(live_server: LiveServer, session: Session, clock: FixedClock) -> Iterator[LiveServer]:
    """The newspaper on a free port, registered with Tollgate, browsing as any address in dev."""

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
                "DEV_BROWSE_AS_ADDRESS": True,
                "IP_CHECK_TTL": 0,  # every article view asks Tollgate
            }
        )

    with serve(build, "the newspaper") as paper:
        yield paper


def log_out(page: Page) -> None:
    """Log out from the header's button."""
    page.get_by_role("button", name="Log out").click()


def ip_sessions_in_report(page: Page, group: str, day: str) -> str:
    """The groups report's IP sessions of ``group`` on ``day`` (ISO), as the staff page shows them."""
    page.get_by_label("From").fill(day)
    page.get_by_label("To (included)").fill(day)
    page.get_by_role("button", name="Show").click()
    expect(page.locator("#from")).to_have_value(day)
    columns = page.locator("table#report thead th").all_inner_texts()
    row = page.locator("table#report tbody tr", has_text=group)
    cell = row.locator("td").nth(columns.index("IP sessions in the range"))
    cell.scroll_into_view_if_needed()  # the table scrolls sideways: show the cell, as a reader would
    return cell.inner_text()


def test_an_admin_buys_seats_invites_a_colleague_who_reads_and_the_office_reads_too(
    page: Page,
    browser: Browser,
    live_server: LiveServer,
    newspaper: LiveServer,
    stripe: LocalstripeServer,
    gateway: StripeGateway,
    session: Session,
    clock: FixedClock,
    ip_checks: dict[str, list[str]],
    screenshot: Screenshot,
) -> None:
    plans_on_sale(session, gateway)
    factories.reader(email="boss@ministry.example", name="The Boss")
    factories.reader(email="ana@ministry.example", name="Ana")
    factories.reader(email="staff@tollgate.example", staff_role=StaffRole.ADMIN)
    session.commit()

    log_in(page, "boss@ministry.example")
    page.goto("/groups/new")
    page.get_by_label("Organisation name").fill("Example Ministry")
    page.get_by_label("Seats").fill("3")
    page.get_by_label("By card").check()
    screenshot(page, "1-order")
    page.get_by_role("button", name="Show the price").click()
    expect(page.locator("[data-total]")).to_contain_text("€288.00")
    screenshot(page, "2-price")
    page.get_by_role("button", name="Continue to the card").click()
    expect(page).to_have_url(re.compile(r"/groups/grp_[^/]+/pay"))
    fill_card(page, "4242424242424242")
    page.get_by_role("button", name=re.compile(r"^Pay ")).click()
    expect(page.locator("[data-seat-use]")).to_contain_text("1 of 3 seats in use")
    group_path = re.sub(r"^https?://[^/]+", "", page.url)
    screenshot(page, "3-group")

    page.get_by_label("E-mail addresses").fill("ana@ministry.example\nbo@ministry.example")
    page.get_by_role("button", name="Invite").click()
    expect(page.locator("[data-invite-report]")).to_contain_text(
        "Invited: ana@ministry.example, bo@ministry.example"
    )
    page.get_by_label("E-mail addresses").fill("cy@ministry.example")
    page.get_by_role("button", name="Invite").click()
    expect(page.locator('[data-refused="cy@ministry.example"]')).to_contain_text("no seats left")
    page.get_by_label("Network (CIDR)").fill(OFFICE)
    page.get_by_role("button", name="Add network").click()
    expect(page.locator(f'[data-range="{OFFICE}"]')).to_contain_text("waiting for approval")
    screenshot(page, "4-invited")
    log_out(page)

    page.goto("/dev/outbox?" + urlencode({"to": "ana@ministry.example"}))
    page.locator('a[href*="/join/"]').first.click()
    expect(page.get_by_role("heading", name="Join Example Ministry")).to_be_visible()
    page.get_by_role("link", name="log in with it").click()
    page.locator("[name=email]").fill("ana@ministry.example")
    page.locator("[name=password]").fill(factories.PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Join Example Ministry")).to_be_visible()
    page.get_by_role("button", name="Take my seat").click()
    expect(page.locator("[data-my-groups]")).to_contain_text("Example Ministry")
    screenshot(page, "5-joined")

    page.goto(newspaper.at(ARTICLE))
    page.locator("[data-paywall]").get_by_role("link", name="Log in").click()
    expect(page.locator("[data-article-body]")).to_be_visible()
    expect(page.locator("[data-access]")).to_have_attribute("data-access", "group_seat")
    screenshot(page, "6-reading")
    log_out_page = live_server.at("/account")
    page.goto(log_out_page)
    log_out(page)

    log_in(page, "boss@ministry.example")
    page.goto(group_path)
    expect(page.locator("[data-seat-use]")).to_contain_text("2 of 3 seats in use")
    page.locator('[data-member="ana@ministry.example"]').get_by_role(
        "button", name="Remove"
    ).click()
    expect(page.locator("[data-seat-use]")).to_contain_text("1 of 3 seats in use")
    screenshot(page, "7-removed")

    expect(page.locator("[data-ip-sessions]")).to_have_attribute("data-ip-sessions", "0")

    today = clock.now().date().isoformat()
    staff = browser.new_page(base_url=live_server.url)
    log_in(staff, "staff@tollgate.example")
    staff.goto("/staff/groups")
    staff.locator(f'[data-pending-range="{OFFICE}"]').get_by_role("button", name="Approve").click()
    expect(staff.get_by_text("Network approved.")).to_be_visible()
    staff.goto("/staff/reports/groups")
    assert ip_sessions_in_report(staff, "Example Ministry", today) == "0"

    visitor = browser.new_page()
    visitor.goto(newspaper.at(f"/dev/visit-from?ip={VISITOR}"))
    visitor.goto(newspaper.at(ARTICLE))
    expect(visitor.locator("[data-article-body]")).to_be_visible(timeout=5000)
    expect(visitor.locator("[data-access]")).to_have_attribute("data-access", "group_ip")
    screenshot(visitor, "8-office-visitor")
    assert ip_checks[VISITOR] == ["group_ip"]
    counter: IpSessionCounter = live_server.app.extensions["ip_sessions"]
    assert counter.flush() == 1

    page.goto(group_path)
    expect(page.locator(f'[data-range="{OFFICE}"]')).to_contain_text("active")
    expect(page.locator("[data-ip-sessions]")).to_have_attribute("data-ip-sessions", "1")
    expect(page.locator("[data-ip-sessions]")).to_contain_text("1 anonymous IP session in the")
    expect(page.locator(f'[data-ip-day="{today}"]')).to_contain_text("1")
    screenshot(page, "9-ip-session")
    staff.reload()
    assert ip_sessions_in_report(staff, "Example Ministry", today) == "1"
    screenshot(staff, "10-groups-report")

    visitor.goto(newspaper.at(ARTICLE))
    expect(visitor.locator("[data-access]")).to_have_attribute("data-access", "group_ip")
    assert ip_checks[VISITOR] == ["group_ip", "group_ip"], "the second view asked Tollgate too"
    assert counter.flush() == 0
    visitor.close()

    page.reload()
    expect(page.locator("[data-ip-sessions]")).to_have_attribute("data-ip-sessions", "1")
    staff.reload()
    assert ip_sessions_in_report(staff, "Example Ministry", today) == "1"
    staff.close()
