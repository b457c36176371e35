"""The staff area: who may see it, finding readers, paging through them, one reader's details."""

from __future__ import annotations

import re

import factory
import pytest
from flask.testing import FlaskClient

from billing.models import Reader, StaffRole
from tests import factories
from tests.helpers import login


def _listed(page: str) -> list[str]:
    """Public ids of the readers in the table of a list page, in order."""
    return re.findall(r'data-reader="([^"]+)"', page)


@pytest.fixture
def staff(client: FlaskClient) -> Reader:
    """A logged-in support agent."""
    agent = factories.reader(
        email="agent@tollgate.example", name="Support Agent", staff_role=StaffRole.SUPPORT
    )
    login(client, agent)
    return agent


@pytest.mark.parametrize("role", [StaffRole.SUPPORT, StaffRole.FINANCE, StaffRole.ADMIN])
def test_support_finance_and_admin_staff_may_see_readers_and_one_reader(
    client: FlaskClient, role: StaffRole
) -> None:
    member = factories.reader(staff_role=role)
    login(client, member)

    assert client.get("/staff/readers").status_code == 200
    assert client.get(f"/staff/readers/{member.public_id}").status_code == 200


def test_a_reader_without_a_staff_role_is_forbidden(client: FlaskClient) -> None:
    someone = factories.reader()
    login(client, someone)

    assert client.get("/staff/readers").status_code == 403
    assert client.get(f"/staff/readers/{someone.public_id}").status_code == 403


def test_a_guest_is_sent_to_the_login_page(client: FlaskClient) -> None:
    someone = factories.reader()

    for path in ("/staff/readers", f"/staff/readers/{someone.public_id}"):
        response = client.get(path)
        assert response.status_code == 302
        assert response.headers["Location"].split("?")[0].endswith("/login")


def test_the_list_shows_each_readers_details_and_entitlement(
    client: FlaskClient, staff: Reader
) -> None:
    on_trial = factories.TrialFactory(
        reader=factories.reader(email="trial.reader@example.org", name="Tina Trial", country="NL")
    ).reader
    unverified = factories.reader(email="new@example.org", email_verified_at=None)

    page = client.get("/staff/readers").get_data(as_text=True)

    assert "3 readers" in page
    row = re.search(rf'<tr data-reader="{on_trial.public_id}">(.*?)</tr>', page, re.S)
    assert row is not None
    cells = re.sub(r"\s+", " ", row.group(1))
    assert "trial.reader@example.org" in cells
    assert "Tina Trial" in cells
    assert "NL" in cells
    assert 'data-reason="trial"' in cells
    unverified_row = re.search(rf'<tr data-reader="{unverified.public_id}">(.*?)</tr>', page, re.S)
    assert unverified_row is not None
    assert 'data-reason="email_unverified"' in unverified_row.group(1)
    assert "support" in page


def test_the_search_finds_readers_by_part_of_their_email_in_any_case(
    client: FlaskClient, staff: Reader
) -> None:
    anna = factories.reader(email="anna.schmidt@example.org", name="Anna S.")
    factories.reader(email="bob@example.org", name="Bob B.")

    page = client.get("/staff/readers", query_string={"q": "SCHMID"}).get_data(as_text=True)

    assert _listed(page) == [anna.public_id]
    assert "1 reader " in page


def test_the_search_finds_readers_by_part_of_their_name_in_any_case(
    client: FlaskClient, staff: Reader
) -> None:
    maria = factories.reader(email="m@example.org", name="Maria Rossi")
    factories.reader(email="g@example.org", name="Giulia Bianchi")

    page = client.get("/staff/readers", query_string={"q": "ross"}).get_data(as_text=True)

    assert _listed(page) == [maria.public_id]


def test_the_search_treats_sql_wildcards_as_plain_characters(
    client: FlaskClient, staff: Reader
) -> None:
    factories.reader(email="plain@example.org")

    for q in ("%", "_"):
        page = client.get("/staff/readers", query_string={"q": q}).get_data(as_text=True)
        assert _listed(page) == []
        assert "0 readers" in page


def test_readers_come_fifty_a_page_with_links_to_the_other_pages(
    client: FlaskClient, staff: Reader
) -> None:
    factories.ReaderFactory.create_batch(59)

    first = client.get("/staff/readers").get_data(as_text=True)
    second = client.get("/staff/readers", query_string={"page": 2}).get_data(as_text=True)

    assert "60 readers" in first
    assert len(_listed(first)) == 50
    assert len(_listed(second)) == 10
    assert set(_listed(first)).isdisjoint(_listed(second))
    assert 'href="/staff/readers?page=2"' in first
    assert 'href="/staff/readers?page=1"' in second
    assert 'aria-current="page"' in second


def test_page_links_keep_the_search(client: FlaskClient, staff: Reader) -> None:
    factories.ReaderFactory.create_batch(55, name=factory.Sequence(lambda n: f"Ines {n}"))

    page = client.get("/staff/readers", query_string={"q": "ines"}).get_data(as_text=True)

    assert "55 readers" in page
    assert 'href="/staff/readers?q=ines&amp;page=2"' in page


def test_a_page_past_the_last_one_is_not_found(client: FlaskClient, staff: Reader) -> None:
    assert client.get("/staff/readers", query_string={"page": 2}).status_code == 404
    assert client.get("/staff/readers", query_string={"page": 0}).status_code == 404


def test_one_reader_page_shows_trial_decision_grants_and_subscriptions(
    client: FlaskClient, staff: Reader
) -> None:
    someone = factories.reader(email="someone@example.org", name="Some One")
    factories.TrialFactory(reader=someone)
    factories.GrantFactory(reader=someone, reason="press card")
    factories.SubscriptionFactory(
        customer=factories.CustomerFactory(reader=someone), stripe_id="sub_shown"
    )

    page = client.get(f"/staff/readers/{someone.public_id}").get_data(as_text=True)

    assert "someone@example.org" in page
    assert 'data-trial-status="active"' in page
    assert "2026-12-09 09:00 UTC" in page
    assert "14 days left" in page
    assert 'data-reason="subscription"' in page
    assert "press card" in page
    assert "sub_shown" in page


def test_one_reader_page_says_when_there_is_no_trial_grant_or_subscription(
    client: FlaskClient, staff: Reader
) -> None:
    page = client.get(f"/staff/readers/{staff.public_id}").get_data(as_text=True)

    assert "No trial taken." in page
    assert "No complimentary access." in page
    assert "No subscriptions." in page
    assert 'data-reason="none"' in page


def test_an_unknown_reader_id_is_not_found(client: FlaskClient, staff: Reader) -> None:
    assert client.get("/staff/readers/rdr_doesnotexist").status_code == 404


@pytest.mark.parametrize(
    ("role", "links"),
    [
        (StaffRole.NONE, set()),
        (StaffRole.SUPPORT, {"Readers"}),
        (StaffRole.ADMIN, {"Readers", "API clients"}),
    ],
)
def test_the_header_offers_staff_pages_by_role(
    client: FlaskClient, role: StaffRole, links: set[str]
) -> None:
    login(client, factories.reader(staff_role=role))
    header = client.get("/account").get_data(as_text=True).split("</header>")[0]
    assert {name for name in ("Readers", "API clients") if f">{name}</a>" in header} == links


# The staff home ------------------------------------------------------------------------------


def test_staff_alone_leads_to_the_staff_home(client: FlaskClient, staff: Reader) -> None:
    response = client.get("/staff")

    assert response.status_code == 308
    assert response.headers["Location"].endswith("/staff/")


@pytest.mark.parametrize(
    ("role", "shown", "hidden"),
    [
        (StaffRole.SUPPORT, ["/staff/readers"], ["/staff/api-clients"]),
        (StaffRole.FINANCE, ["/staff/readers"], ["/staff/api-clients"]),
        (StaffRole.ADMIN, ["/staff/readers", "/staff/api-clients"], []),
    ],
)
def test_the_staff_home_lists_the_sections_the_role_may_open(
    client: FlaskClient, role: StaffRole, shown: list[str], hidden: list[str]
) -> None:
    login(client, factories.reader(staff_role=role))

    response = client.get("/staff/")

    assert response.status_code == 200
    page = response.get_data(as_text=True)
    for path in shown:
        assert f'href="{path}"' in page
        assert client.get(path).status_code == 200
    for path in hidden:
        assert f'href="{path}"' not in page
        assert client.get(path).status_code == 403


def test_the_staff_home_is_not_for_readers(client: FlaskClient) -> None:
    login(client, factories.reader())

    assert client.get("/staff/").status_code == 403


def test_the_staff_home_sends_visitors_to_log_in(client: FlaskClient) -> None:
    response = client.get("/staff/")

    assert response.status_code == 302
    assert "/login" in response.headers["Location"]
