"""The reader's account pages: overview, free trial, password and e-mail changes, deletion."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.clock import FixedClock
from billing.models import AuditLog, Reader, Trial
from tests import factories
from tests.conftest import Outbox, post_form

NEW_PASSWORD = "a brand new password"


def log_in(client: FlaskClient, email: str, password: str = factories.PASSWORD) -> Any:
    """Submit the log-in form."""
    return post_form(client, "/login", {"email": email, "password": password})


def sign_up_and_verify(client: FlaskClient, outbox: Outbox, email: str) -> None:
    """Create an account through the sign-up page and open the verification link."""
    response = post_form(
        client,
        "/signup",
        {"email": email, "password": factories.PASSWORD, "name": "Sam Again", "country": "FR"},
    )
    assert response.status_code == 302
    normalised = email.strip().lower()
    assert client.get(outbox.last_link(normalised, "/verify-email")).status_code == 302


def start_trial(client: FlaskClient) -> Any:
    """Press "Start free trial"."""
    return post_form(client, "/trial", {})


def audit_actions(session: Session) -> list[str]:
    """The audit log's actions, oldest first."""
    session.expire_all()
    return list(session.scalars(select(AuditLog.action).order_by(AuditLog.id)))


@pytest.fixture
def reader(session: Session) -> Reader:
    """A verified reader with the factories' password, committed."""
    created = factories.reader(email="reader@example.org", name="Rita Reader")
    session.commit()
    return created


@pytest.fixture
def client(app: Flask, reader: Reader) -> FlaskClient:
    """A browser in which ``reader`` is logged in."""
    browser = app.test_client()
    assert log_in(browser, reader.email).status_code == 302
    return browser


# Pages -----------------------------------------------------------------------------------------

PAGES = [
    ("/account", "Your account"),
    ("/trial", "Start your 14-day free trial"),
    ("/account/password", "Change your password"),
    ("/account/email", "Change your e-mail address"),
    ("/account/delete", "Delete your account"),
]


@pytest.mark.parametrize(("path", "heading"), PAGES)
def test_every_account_page_renders_for_a_logged_in_reader(
    client: FlaskClient, path: str, heading: str
) -> None:
    response = client.get(path)
    body = response.get_data(as_text=True)
    assert response.status_code == 200
    assert f"<h1>{heading}</h1>" in body
    assert "<title>" in body


@pytest.mark.parametrize(("path", "heading"), PAGES)
def test_account_pages_send_guests_to_the_login(app: Flask, path: str, heading: str) -> None:
    response = app.test_client().get(path)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login?next=")


def test_the_account_shows_who_the_reader_is_and_links_to_the_changes(client: FlaskClient) -> None:
    body = client.get("/account").get_data(as_text=True)
    assert "Rita Reader" in body
    assert "reader@example.org" in body
    assert 'data-verified="yes"' in body
    for path in ("/account/password", "/account/email", "/account/delete", "/trial"):
        assert f'href="{path}"' in body
    assert 'data-reason="none"' in body
    assert "Access: no" in body


def test_an_unverified_reader_sees_it_and_can_ask_for_the_link_again(
    app: Flask, session: Session
) -> None:
    factories.reader(email="new@example.org", email_verified_at=None)
    session.commit()
    browser = app.test_client()
    log_in(browser, "new@example.org")

    body = browser.get("/account").get_data(as_text=True)

    assert 'data-verified="no"' in body
    assert 'action="/verify-email/resend"' in body
    assert 'data-reason="email_unverified"' in body


# Free trial ------------------------------------------------------------------------------------


def test_the_trial_page_offers_one_button_and_no_card(client: FlaskClient) -> None:
    body = client.get("/trial").get_data(as_text=True)
    assert "Start your 14-day free trial" in body
    assert "No card needed" in body
    assert body.count("<button") == 2  # the trial button, and log out in the header
    assert ">Start free trial</button>" in body


def test_starting_the_trial_shows_14_days_left_and_access_until_its_end(
    client: FlaskClient, session: Session
) -> None:
    response = start_trial(client)

    assert response.status_code == 302
    assert response.headers["Location"] == "/account"
    body = client.get("/account").get_data(as_text=True)
    assert "Your free trial has started." in body
    assert "14 days left" in body
    assert 'data-reason="trial"' in body
    assert "Access: yes — trial, until 9 December 2026" in body
    assert audit_actions(session) == ["trial.started"]


def test_half_a_day_before_the_end_the_account_shows_1_day_left(
    client: FlaskClient, clock: FixedClock
) -> None:
    start_trial(client)
    clock.advance(days=13.5)

    body = client.get("/account").get_data(as_text=True)

    assert "1 day left" in body
    assert "1 days" not in body


def test_after_the_trial_the_account_says_it_has_ended(
    client: FlaskClient, clock: FixedClock
) -> None:
    start_trial(client)
    clock.advance(days=15)

    body = client.get("/account").get_data(as_text=True)

    assert "Your free trial has ended" in body
    assert 'data-reason="trial_expired"' in body
    assert "Access: no" in body


def test_a_second_trial_start_is_refused_with_409(client: FlaskClient, session: Session) -> None:
    start_trial(client)

    again = start_trial(client)

    body = again.get_data(as_text=True)
    assert again.status_code == 409
    assert '<p class="error" role="alert">You have already used your free trial.</p>' in body
    assert len(session.scalars(select(Trial)).all()) == 1


def test_once_used_the_trial_page_gives_the_reason_and_no_button(client: FlaskClient) -> None:
    start_trial(client)
    body = client.get("/trial").get_data(as_text=True)
    assert "You have already used your free trial." in body
    assert "Start free trial</button>" not in body


def test_an_unverified_reader_cannot_start_a_trial(app: Flask, session: Session) -> None:
    factories.reader(email="new@example.org", email_verified_at=None)
    session.commit()
    browser = app.test_client()
    log_in(browser, "new@example.org")

    response = start_trial(browser)

    assert response.status_code == 403
    assert "verify your e-mail address" in response.get_data(as_text=True)
    assert session.scalars(select(Trial)).all() == []


def test_a_gmail_variant_of_an_address_that_had_a_trial_gets_no_second_trial(
    app: Flask, session: Session, outbox: Outbox
) -> None:
    first = app.test_client()
    sign_up_and_verify(first, outbox, "first.last@gmail.com")
    assert start_trial(first).status_code == 302

    second = app.test_client()
    sign_up_and_verify(second, outbox, "First.Last+x@gmail.com")
    refused = start_trial(second)

    assert refused.status_code == 409
    assert "A free trial was already used with this e-mail address." in refused.get_data(
        as_text=True
    )
    emails = set(session.scalars(select(Reader.email)))
    assert emails == {"first.last@gmail.com", "first.last+x@gmail.com"}
    assert len(session.scalars(select(Trial)).all()) == 1


def test_a_deleted_account_signed_up_again_gets_no_second_trial(
    app: Flask, session: Session, outbox: Outbox, client: FlaskClient, reader: Reader
) -> None:
    start_trial(client)
    post_form(client, "/account/delete", {"password": factories.PASSWORD})

    again = app.test_client()
    sign_up_and_verify(again, outbox, "reader@example.org")

    assert "A free trial was already used" in again.get("/trial").get_data(as_text=True)
    assert start_trial(again).status_code == 409


def test_starting_the_trial_without_the_csrf_token_is_refused(
    client: FlaskClient, session: Session
) -> None:
    assert client.post("/trial").status_code == 400
    assert session.scalars(select(Trial)).all() == []


@pytest.fixture
def strict_trial_limit(app_config: dict[str, Any]) -> None:
    """Allow two trial starts a minute (set before the app is created)."""
    app_config["RATELIMIT_TRIAL"] = "2 per minute"


@pytest.mark.usefixtures("strict_trial_limit")
def test_too_many_trial_starts_are_answered_429(client: FlaskClient) -> None:
    statuses = [start_trial(client).status_code for _ in range(3)]
    assert statuses == [302, 409, 429]


# Password change -------------------------------------------------------------------------------


def change_password(client: FlaskClient, current: str, new: str) -> Any:
    """Submit the password change form."""
    return post_form(
        client, "/account/password", {"current_password": current, "new_password": new}
    )


def test_changing_the_password_keeps_this_session_and_ends_the_others(
    app: Flask, session: Session, client: FlaskClient, reader: Reader
) -> None:
    other_device = app.test_client()
    log_in(other_device, reader.email)
    assert other_device.get("/account").status_code == 200

    response = change_password(client, factories.PASSWORD, NEW_PASSWORD)

    assert response.status_code == 302
    assert response.headers["Location"] == "/account"
    assert client.get("/account").status_code == 200
    bounced = other_device.get("/account")
    assert bounced.status_code == 302
    assert bounced.headers["Location"].startswith("/login")
    assert log_in(app.test_client(), reader.email, NEW_PASSWORD).status_code == 302
    assert log_in(app.test_client(), reader.email, factories.PASSWORD).status_code == 400
    assert audit_actions(session) == ["account.password_changed"]


@pytest.mark.parametrize(
    ("current", "new", "fields"),
    [
        ("not my password", NEW_PASSWORD, ["current_password"]),
        (factories.PASSWORD, "short", ["new_password"]),
        ("", "", ["current_password", "new_password"]),
        (factories.PASSWORD, "reader@example.org", ["new_password"]),
    ],
)
def test_an_invalid_password_change_is_refused_next_to_the_field(
    app: Flask, session: Session, client: FlaskClient, current: str, new: str, fields: list[str]
) -> None:
    response = change_password(client, current, new)

    body = response.get_data(as_text=True)
    assert response.status_code == 400
    for name in fields:
        assert f'data-field="{name}"' in body
    assert log_in(app.test_client(), "reader@example.org").status_code == 302
    assert audit_actions(session) == []


# E-mail change ---------------------------------------------------------------------------------


def ask_email_change(
    client: FlaskClient, new_email: str, password: str = factories.PASSWORD
) -> Any:
    """Submit the e-mail change form."""
    return post_form(client, "/account/email", {"password": password, "new_email": new_email})


def test_changing_the_email_address_takes_effect_from_the_link_sent_there(
    app: Flask, session: Session, outbox: Outbox, client: FlaskClient, reader: Reader
) -> None:
    response = ask_email_change(client, " Rita@Elsewhere.example ")

    assert response.status_code == 302
    assert "We sent a confirmation link to rita@elsewhere.example" in client.get(
        "/account"
    ).get_data(as_text=True)
    session.refresh(reader)
    assert reader.email == "reader@example.org"
    [mail] = outbox.all("rita@elsewhere.example")
    assert mail.subject == "Confirm your new e-mail address"
    link = outbox.last_link("rita@elsewhere.example", "/account/email/confirm")

    confirmed = client.get(link)

    assert confirmed.status_code == 302
    assert confirmed.headers["Location"] == "/account"
    assert "Your e-mail address is now rita@elsewhere.example." in client.get("/account").get_data(
        as_text=True
    )
    session.refresh(reader)
    assert reader.email == "rita@elsewhere.example"
    assert reader.is_verified
    entry = session.scalars(select(AuditLog)).one()
    assert entry.action == "account.email_changed"
    assert entry.details == {"old": "reader@example.org", "new": "rita@elsewhere.example"}
    assert log_in(app.test_client(), "rita@elsewhere.example").status_code == 302
    assert client.get(link).status_code == 400, "the link works once"


def test_an_email_change_to_an_address_taken_meanwhile_is_refused_with_409(
    session: Session, outbox: Outbox, client: FlaskClient, reader: Reader
) -> None:
    ask_email_change(client, "taken@example.org")
    link = outbox.last_link("taken@example.org", "/account/email/confirm")
    factories.reader(email="taken@example.org")
    session.commit()

    response = client.get(link)

    assert response.status_code == 409
    assert "Another account already uses this address." in response.get_data(as_text=True)
    session.refresh(reader)
    assert reader.email == "reader@example.org"


def test_a_forged_email_change_link_is_refused(client: FlaskClient) -> None:
    response = client.get("/account/email/confirm?token=forged")
    assert response.status_code == 400
    assert "This link is not valid" in response.get_data(as_text=True)


@pytest.mark.parametrize(
    ("password", "new_email", "fields"),
    [
        ("not my password", "rita@elsewhere.example", ["password"]),
        (factories.PASSWORD, "not an address", ["new_email"]),
        (factories.PASSWORD, "READER@example.org", ["new_email"]),
        ("", "", ["password", "new_email"]),
    ],
)
def test_an_invalid_email_change_is_refused_next_to_the_field(
    client: FlaskClient, outbox: Outbox, password: str, new_email: str, fields: list[str]
) -> None:
    response = ask_email_change(client, new_email, password)

    body = response.get_data(as_text=True)
    assert response.status_code == 400
    for name in fields:
        assert f'data-field="{name}"' in body
    assert outbox.all() == []


# Deletion --------------------------------------------------------------------------------------


def test_deleting_the_account_logs_out_and_removes_it(
    session: Session, client: FlaskClient, reader: Reader
) -> None:
    public_id = reader.public_id

    response = post_form(client, "/account/delete", {"password": factories.PASSWORD})

    assert response.status_code == 302
    assert response.headers["Location"] == "/signup"
    assert "Your account is deleted." in client.get("/signup").get_data(as_text=True)
    assert client.get("/account").status_code == 302
    session.expire_all()
    assert session.scalars(select(Reader)).all() == []
    entry = session.scalars(select(AuditLog)).one()
    assert (entry.action, entry.actor_label, entry.target_id) == (
        "account.deleted",
        "reader (erased)",
        public_id,
    ), "the audit log keeps no address of an erased reader"


def test_the_delete_button_is_marked_as_dangerous(client: FlaskClient) -> None:
    body = client.get("/account/delete").get_data(as_text=True)
    assert '<button type="submit" class="danger">Delete my account</button>' in body


@pytest.mark.parametrize("password", ["not my password", ""])
def test_deleting_needs_the_right_password(
    session: Session, client: FlaskClient, password: str
) -> None:
    response = post_form(client, "/account/delete", {"password": password})

    assert response.status_code == 400
    assert 'data-field="password"' in response.get_data(as_text=True)
    assert client.get("/account").status_code == 200
    session.expire_all()
    assert len(session.scalars(select(Reader)).all()) == 1
    assert audit_actions(session) == []


@pytest.mark.parametrize(
    ("path", "data"),
    [
        (
            "/account/password",
            {"current_password": factories.PASSWORD, "new_password": NEW_PASSWORD},
        ),
        ("/account/email", {"password": factories.PASSWORD, "new_email": "x@example.org"}),
        ("/account/delete", {"password": factories.PASSWORD}),
    ],
)
def test_account_forms_posted_without_the_csrf_token_are_refused(
    session: Session, client: FlaskClient, path: str, data: dict[str, str]
) -> None:
    assert client.post(path, data=data).status_code == 400
    assert audit_actions(session) == []
    assert client.get("/account").status_code == 200
