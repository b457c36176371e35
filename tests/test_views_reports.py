"""The report pages: who may see them, their filters, and bad filters refused clearly."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from billing.models import StaffRole
from billing.services import reports
from tests import factories
from tests.helpers import login

PAGES = [
    "/staff/reports",
    *(f"/staff/reports/{name}" for name in reports.REPORTS),
    *(f"/staff/reports/{name}/export?format=csv" for name in reports.REPORTS),
]


@pytest.mark.parametrize("role", [StaffRole.FINANCE, StaffRole.ADMIN])
def test_finance_staff_and_admins_see_every_report_and_export(
    client: FlaskClient, role: StaffRole
) -> None:
    login(client, factories.reader(staff_role=role))

    for path in PAGES:
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.get_data(), "read the streamed file to its end"
        response.close()


@pytest.mark.parametrize("role", [StaffRole.NONE, StaffRole.SUPPORT])
def test_readers_and_support_staff_are_refused_every_report(
    client: FlaskClient, role: StaffRole
) -> None:
    login(client, factories.reader(staff_role=role))

    for path in PAGES:
        assert client.get(path).status_code == 403, path


def test_a_guest_is_sent_to_log_in_for_every_report(client: FlaskClient) -> None:
    for path in PAGES:
        response = client.get(path)
        assert response.status_code == 302, path
        assert response.headers["Location"].split("?")[0].endswith("/login")


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("from=2026-02-30", "from"),
        ("from=2026-11-10&to=2026-11-01", "to"),
        ("currency=euro", "currency"),
        ("country=B%00", "country"),
        ("owner=company", "owner"),
        ("period=decade", "period"),
        ("plan=%3Cscript%3E", "plan"),
        ("format=pdf", "format"),
    ],
)
def test_a_bad_filter_is_refused_with_400_naming_it(
    client: FlaskClient, query: str, field: str
) -> None:
    login(client, factories.reader(staff_role=StaffRole.FINANCE))

    path = "/staff/reports/invoices/export" if field == "format" else "/staff/reports/invoices"
    response = client.get(f"{path}?{query}", headers={"Accept": "application/json"})

    assert response.status_code == 400
    assert response.get_json()["error"]["field"] == field


def test_an_unknown_report_is_404(client: FlaskClient) -> None:
    login(client, factories.reader(staff_role=StaffRole.FINANCE))

    assert client.get("/staff/reports/ledger").status_code == 404


def test_the_vat_page_defaults_to_the_last_whole_quarter_and_the_mrr_page_to_last_month(
    client: FlaskClient,
) -> None:
    login(client, factories.reader(staff_role=StaffRole.FINANCE))

    vat_page = client.get("/staff/reports/vat").get_data(as_text=True)
    mrr_page = client.get("/staff/reports/mrr").get_data(as_text=True)

    assert 'value="2026-07-01"' in vat_page and 'value="2026-09-30"' in vat_page
    assert "Nil return" in vat_page
    assert 'value="2026-10-01"' in mrr_page and 'value="2026-10-31"' in mrr_page
