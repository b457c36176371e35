"""The report pages: who may see them, their filters, and bad filters refused clearly."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from pathlib import Path

import openpyxl
import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from billing.models import StaffRole
from billing.services import reports
from tests import factories
from tests import report_support as history
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


def _owned_history(session: Session) -> dict[str, tuple[str, str]]:
    """For each of the vat, trials and dunning reports, something a group has and something a
    reader has, as (the group's mark, the reader's mark) in the report's cells."""
    from billing.models import GroupMembership, MembershipRole, SubscriptionStatus

    person = history.customer(session, datetime(2026, 9, 1, tzinfo=UTC), country="NL")
    company = history.customer(session, datetime(2026, 9, 1, tzinfo=UTC), country="DE", group=True)
    history.invoice(session, person, datetime(2026, 10, 5, tzinfo=UTC), 1210, 210)
    history.invoice(session, company, datetime(2026, 10, 6, tzinfo=UTC), 11900, 1900)
    seated = factories.TrialFactory(started_at=datetime(2026, 10, 2, tzinfo=UTC))
    factories.TrialFactory(started_at=datetime(2026, 11, 2, tzinfo=UTC))
    session.add(
        GroupMembership(
            group_id=company.group_id,
            reader_id=seated.reader_id,
            role=MembershipRole.MEMBER,
            joined_at=datetime(2026, 10, 3, tzinfo=UTC),
        )
    )
    for owner in (person, company):
        sub = history.subscription(
            session, owner, history.plan(session), datetime(2026, 10, 1, tzinfo=UTC)
        )
        sub.status = SubscriptionStatus.PAST_DUE
    session.commit()
    return {
        "vat": ("DE", "NL"),
        "trials": ("2026-10", "2026-11"),
        "dunning": (company.email, person.email),
    }


@pytest.mark.parametrize("name", ["vat", "trials", "dunning"])
def test_the_vat_trials_and_dunning_pages_and_exports_take_the_owner_filter(
    client: FlaskClient, session: Session, tmp_path: Path, name: str
) -> None:
    group_mark, reader_mark = _owned_history(session)[name]
    login(client, factories.reader(staff_role=StaffRole.FINANCE))
    query = "from=2026-10-01&to=2026-12-31&owner=group"

    page = client.get(f"/staff/reports/{name}?{query}").get_data(as_text=True)
    data = client.get(f"/staff/reports/{name}/export?{query}&format=csv").get_data(as_text=True)
    xlsx = client.get(f"/staff/reports/{name}/export?{query}&format=xlsx")

    assert '<option value="group" selected>' in page
    table = page[page.index('<table class="report" id="report">') :]
    table = table[: table.index("</table>")]
    assert f">{group_mark}<" in table and f">{reader_mark}<" not in table
    cells = {cell for row in csv.reader(io.StringIO(data)) for cell in row}
    assert group_mark in cells and reader_mark not in cells
    path = tmp_path / "report.xlsx"
    path.write_bytes(xlsx.data)
    workbook = openpyxl.load_workbook(path, read_only=True)
    values = {v for row in workbook.worksheets[0].iter_rows(values_only=True) for v in row}
    workbook.close()
    assert group_mark in values and reader_mark not in values
