"""GDPR: a reader downloads their data and erases their account; invoices stay, the address
survives only as a hash that still blocks a second trial."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.gateway import StripeGateway
from billing.models import AuditLog, Customer, Invoice, Reader, Trial, TrialStatus
from billing.services import payments, trials
from billing.services.privacy import erased_email_hash
from tests import factories
from tests.conftest import post_form, real_now
from tests.helpers import login
from tests.payments_support import only_subscription, plans_on_sale, reader_with_card
from tests.stripe_server import LocalstripeServer


def test_a_reader_downloads_their_data_as_json_without_secrets(
    client: FlaskClient, session: Session
) -> None:
    trial = factories.TrialFactory(reader=factories.reader(email="dora@example.org", name="Dora"))
    login(client, trial.reader)

    response = client.get("/account/data")

    assert response.status_code == 200
    assert response.headers["Content-Disposition"].startswith("attachment; filename=tollgate-data-")
    data = json.loads(response.data)
    assert data["account"]["email"] == "dora@example.org"
    assert data["trial"]["status"] == "active"
    text = response.get_data(as_text=True)
    assert trial.reader.password_hash not in text and trial.reader.session_token not in text
    assert session.scalars(select(AuditLog.action)).all() == ["account.data_exported"]
    assert "Download my data" in client.get("/account").get_data(as_text=True)


def test_the_data_download_needs_a_login(client: FlaskClient) -> None:
    assert client.get("/account/data").status_code == 302


@pytest.mark.usefixtures("stripe")
def test_erasing_an_account_cancels_at_period_end_keeps_invoices_and_blocks_a_second_trial(
    client: FlaskClient,
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    app_config: dict[str, object],
) -> None:
    now = real_now()
    plans_on_sale(session, gateway)
    reader = reader_with_card(session, gateway, stripe, now, email="Erin.Erased+news@gmail.com")
    factories.TrialFactory(
        reader=reader,
        started_at=now - timedelta(days=20),
        status=TrialStatus.CONVERTED,
        converted_at=now - timedelta(days=6),
    )
    payments.subscribe(session, gateway, reader, "individual-monthly", now=now)
    session.commit()
    canonical = reader.email_canonical
    login(client, reader)

    response = post_form(client, "/account/delete", {"password": factories.PASSWORD})

    assert response.status_code == 302
    session.expire_all()
    assert session.scalars(select(Reader)).all() == []
    assert only_subscription(session).cancel_at_period_end, "paid until the period ends"
    assert gateway.retrieve_subscription(only_subscription(session).stripe_id).cancel_at_period_end
    assert len(session.scalars(select(Invoice)).all()) == 1, "invoices are kept"
    customer = session.scalars(select(Customer)).one()
    assert (customer.email, customer.email_canonical) == (
        "erased@invalid",
        erased_email_hash(canonical),
    )
    assert session.scalars(select(Trial.email_canonical)).one() == erased_email_hash(canonical)
    kept = [
        customer.email,
        customer.email_canonical,
        *session.scalars(select(Trial.email_canonical)),
    ]
    assert not any("erin" in value.lower() for value in kept)

    again = factories.reader(email="erinerased@gmail.com", email_canonical=canonical)
    assert trials.refusal_reason(session, again) is not None, "no second trial"
