"""The staff home: finance staff and admins see the dashboard's charts with their numbers."""

from __future__ import annotations

import re

import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from billing.models import StaffRole, SubscriptionEventKind
from tests import factories
from tests import report_support as history
from tests.helpers import login
from tests.test_reports import at


def _numbers(page: str, key: str) -> list[str]:
    table = re.search(rf'<table class="numbers" id="numbers-{key}">(.*?)</table>', page, re.S)
    assert table, key
    return [
        re.sub(r"\s+", " ", cell).strip()
        for cell in re.findall(r"<td>(.*?)</td>", table.group(1), re.S)
    ]


def test_finance_staff_see_mrr_revenue_customers_and_trials_as_charts_with_their_numbers(
    client: FlaskClient, session: Session
) -> None:
    monthly = history.plan(session)
    owner = history.customer(session, at(9, 1))
    sub = history.subscription(session, owner, monthly, at(10, 5))
    history.invoice(session, owner, at(10, 5), 1200, 208, sub=sub)
    history.entry(session, sub, SubscriptionEventKind.CREATED, at(10, 5), 0, 1200)
    factories.TrialFactory(started_at=at(11, 2))
    session.commit()
    login(client, factories.reader(staff_role=StaffRole.FINANCE))

    page = client.get("/staff/").get_data(as_text=True)

    assert page.count('<svg xmlns="http://www.w3.org/2000/svg"') == 4
    assert 'role="img"' in page and '<title id="chart-mrr-title">' in page
    mrr = _numbers(page, "mrr")
    assert len(mrr) == 12
    assert mrr[-3:] == ["€0.00", "€9.92", "€9.92"], "September, October, November"
    assert _numbers(page, "revenue")[-2:] == ["€9.92", "€0.00"]
    assert _numbers(page, "customers")[-2:] == ["1", "1"]
    assert _numbers(page, "trials")[-2:] == ["1", "0"], "November: started, converted"


def test_support_staff_get_the_staff_home_without_the_money(client: FlaskClient) -> None:
    login(client, factories.reader(staff_role=StaffRole.SUPPORT))

    page = client.get("/staff/").get_data(as_text=True)

    assert "Find a reader" in page
    assert "<svg" not in page and "Reports and exports" not in page


@pytest.mark.parametrize("role", [StaffRole.NONE])
def test_a_reader_is_refused_the_staff_home_and_a_guest_is_sent_to_log_in(
    client: FlaskClient, role: StaffRole
) -> None:
    assert client.get("/staff/").status_code == 302
    login(client, factories.reader(staff_role=role))
    assert client.get("/staff/").status_code == 403
