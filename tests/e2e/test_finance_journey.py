"""Finance and support staff in a real browser: the dashboard's charts, the VAT return exported
as XLSX and CSV, a trial extended and access granted by support."""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from pathlib import Path

import openpyxl
import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.models import AuditLog, ComplimentaryGrant, StaffRole, SubscriptionEventKind
from tests import factories
from tests import report_support as history
from tests.test_reports import at

pytestmark = pytest.mark.browser

Screenshot = Callable[[Page, str], Path]


def log_in(page: Page, email: str) -> None:
    """Log in through the form."""
    page.goto("/login")
    page.locator("[name=email]").fill(email)
    page.locator("[name=password]").fill(factories.PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("button", name="Log out")).to_be_visible()


def test_a_finance_user_reads_the_dashboard_and_exports_last_quarters_vat_return(
    page: Page, session: Session, screenshot: Screenshot, tmp_path: Path
) -> None:
    monthly = history.plan(session)
    for month, country, tax in ((7, "NL", 208), (8, "DE", 192), (9, "BE", 208)):
        owner = history.customer(session, at(month, 1), country=country)
        sub = history.subscription(session, owner, monthly, at(month, 3))
        history.invoice(session, owner, at(month, 3), 1200, tax, sub=sub)
        history.entry(session, sub, SubscriptionEventKind.CREATED, at(month, 3), 0, 1200)
    factories.reader(email="fiona@example.org", staff_role=StaffRole.FINANCE)
    session.commit()

    log_in(page, "fiona@example.org")
    page.goto("/staff/")
    charts = page.locator("svg.chart")
    expect(charts).to_have_count(4)
    expect(page.locator("#numbers-mrr")).to_contain_text("€29.92")
    for index in range(4):
        expect(charts.nth(index)).to_be_visible()
    screenshot(page, "dashboard")

    page.get_by_role("link", name="Reports and exports").click()
    page.get_by_role("link", name="VAT (One-Stop-Shop)").click()
    expect(page.locator("#from")).to_have_value("2026-07-01")
    expect(page.locator("#to")).to_have_value("2026-09-30")
    expect(page.locator("table#report")).to_contain_text("NL")
    screenshot(page, "vat-return")
    with page.expect_download() as xlsx_download:
        page.get_by_role("link", name="XLSX").click()
    with page.expect_download() as csv_download:
        page.get_by_role("link", name="CSV").click()

    assert xlsx_download.value.suggested_filename == "vat_2026-07-01_2026-09-30.xlsx"
    saved = tmp_path / xlsx_download.value.suggested_filename
    xlsx_download.value.save_as(saved)
    workbook = openpyxl.load_workbook(saved, read_only=True)
    rows = list(workbook.worksheets[0].iter_rows(values_only=True))
    workbook.close()
    assert rows[0][0] == "Period"
    assert {r[3] for r in rows[1:4]} == {"NL", "DE", "BE"}
    with open(csv_download.value.path(), encoding="utf-8") as handle:
        lines = list(csv.reader(handle))
    assert lines[0][0] == "Period" and any(line[3:4] == ["DE"] for line in lines)
    exported = session.scalars(select(AuditLog).where(AuditLog.action == "report.exported")).all()
    assert sorted(e.details["format"] for e in exported) == ["csv", "xlsx"]


def test_a_support_user_finds_a_reader_extends_the_trial_and_grants_access(
    page: Page, session: Session, screenshot: Screenshot
) -> None:
    trial = factories.TrialFactory(
        reader=factories.reader(email="tom@example.org", name="Tom Trial")
    )
    factories.reader(email="sam@example.org", staff_role=StaffRole.SUPPORT)
    ends = trial.ends_at

    log_in(page, "sam@example.org")
    page.goto("/staff/")
    page.get_by_role("link", name="Find a reader").click()
    page.get_by_label("E-mail, name, reader id or Stripe id").fill("tom@")
    page.get_by_role("button", name="Find").click()
    page.get_by_role("link", name="tom@example.org").click()
    form = page.get_by_role("form", name="Extend the trial")
    form.get_by_label("Extra days").fill("5")
    form.get_by_label("Reason (for the audit log)").fill("Asked on the phone, ticket 77")
    form.get_by_role("button", name="Extend the trial").click()
    expect(page.get_by_text("Trial extended")).to_be_visible()
    grant = page.get_by_role("form", name="Grant complimentary access")
    grant.get_by_label("Until (the day it ends)").fill("2027-01-31")
    grant.get_by_label("Reason (for the audit log)").fill("Press pass")
    grant.get_by_role("button", name="Grant access").click()
    expect(page.get_by_text("Complimentary access granted until 2027-01-31.")).to_be_visible()
    screenshot(page, "support-reader")

    session.expire_all()
    assert (trial.ends_at - ends).days == 5
    assert session.scalars(select(ComplimentaryGrant.reason)).all() == ["Press pass"]
    actions = session.scalars(select(AuditLog.action).order_by(AuditLog.id)).all()
    assert actions == ["support.trial_extended", "support.access_granted"]
    assert re.search(r"access", page.content())
