"""Sign-up, verification, log-in, log-out and password reset, through the pages a browser uses."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from billing.clock import FixedClock
from billing.models import AuditLog, Reader
from tests import factories
from tests.conftest import Outbox, csrf_token, post_form

NEW = {
    "email": "ada@example.org",
    "password": "a long enough password",
    "name": "Ada Reader",
    "country": "BE",
}


def signup(client: FlaskClient, **changes: str) -> Any:
    """Submit the sign-up form with ``NEW`` (changed by ``changes``)."""
    return post_form(client, "/signup", {**NEW, **changes})


def log_in(client: FlaskClient, email: str, password: str = factories.PASSWORD) -> Any:
    """Submit the log-in form."""
    return post_form(client, "/login", {"email": email, "password": password})


def without_csrf(body: str) -> str:
    """The page with every CSRF token value blanked out."""
    return re.sub(r'(name="csrf_token"[^>]*value=")[^"]*', r"\1", body)


def main_of(body: str) -> str:
    """The ``<main>`` element of a page (what differs by page, not by navigation)."""
    match = re.search(r"<main.*</main>", body, re.S)
    assert match, "no <main> on the page"
    return match.group(0)


def count_readers(session: Session) -> int:
    """How many accounts exist."""
    return session.scalar(select(func.count()).select_from(Reader)) or 0


def is_logged_in(client: FlaskClient) -> bool:
    """Whether ``client`` gets the account page rather than the log-in redirect."""
    return client.get("/account").status_code == 200


@pytest.fixture
def reader(session: Session) -> Reader:
    """A verified reader with the factories' password, committed."""
    created = factories.reader(email="reader@example.org", name="Rita Reader")
    session.commit()
    return created


# Pages -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "heading", "button"),
    [
        ("/signup", "Create your account", "Create account"),
        ("/login", "Log in", "Log in"),
        ("/password/reset", "Reset your password", "Send reset link"),
        ("/password/reset?sent=1", "Check your inbox", None),
        ("/verify-email", "Check your inbox", "Send the link again"),
    ],
)
def test_every_auth_page_renders_with_a_title_and_a_heading(
    client: FlaskClient, path: str, heading: str, button: str | None
) -> None:
    response = client.get(path)
    body = response.get_data(as_text=True)
    assert response.status_code == 200
    assert f"<h1>{heading}</h1>" in body
    assert "<title>" in body
    if button:
        assert f">{button}</button>" in body


def test_the_signup_form_labels_every_field_and_asks_for_autocomplete(client: FlaskClient) -> None:
    body = client.get("/signup").get_data(as_text=True)
    for name, autocomplete in [
        ("email", "email"),
        ("password", "new-password"),
        ("name", "name"),
        ("country", "country"),
    ]:
        assert f'<label for="{name}">' in body
        assert re.search(
            rf'<(input|select)[^>]*autocomplete="{autocomplete}"[^>]*name="{name}"', body
        )


def test_the_country_list_starts_empty_then_lists_the_eu_before_the_rest(
    client: FlaskClient,
) -> None:
    body = client.get("/signup").get_data(as_text=True)
    select_html = re.search(r'<select[^>]*name="country".*?</select>', body, re.S)
    assert select_html
    options = re.findall(r'<option value="([^"]*)"', select_html.group(0))
    assert options[0] == ""
    assert "Choose…</option>" in select_html.group(0)
    assert options.index("AT") < options.index("SE") < options.index("AF") < options.index("ZW")
    assert len(options) == 1 + 27 + 223
    assert '<optgroup label="European Union">' in select_html.group(0)


# Sign-up and verification ----------------------------------------------------------------------


def test_signing_up_logs_the_reader_in_and_mails_a_verification_link(
    client: FlaskClient, session: Session, outbox: Outbox
) -> None:
    response = signup(client, email="  Ada@Example.org ")

    assert response.status_code == 302
    assert response.headers["Location"] == "/verify-email"
    created = session.scalars(select(Reader)).one()
    assert (created.email, created.name, created.country) == ("ada@example.org", "Ada Reader", "BE")
    assert created.email_verified_at is None
    [mail] = outbox.all("ada@example.org")
    assert mail.subject == "Confirm your e-mail address"
    assert "http://localhost/verify-email?token=" in mail.body
    assert is_logged_in(client)


def test_the_check_your_inbox_page_offers_to_send_the_link_again(client: FlaskClient) -> None:
    signup(client)
    body = client.get("/verify-email").get_data(as_text=True)
    assert "Check your inbox" in body
    assert 'action="/verify-email/resend"' in body
    assert ">Send the link again</button>" in body


def test_the_verification_link_verifies_the_address_and_goes_to_the_account(
    client: FlaskClient, session: Session, outbox: Outbox, clock: FixedClock
) -> None:
    signup(client)
    clock.advance(hours=3)

    response = client.get(outbox.last_link(NEW["email"], "/verify-email"))

    assert response.status_code == 302
    assert response.headers["Location"] == "/account"
    account = client.get("/account").get_data(as_text=True)
    assert "Your e-mail address is verified." in account
    assert session.scalars(select(Reader)).one().email_verified_at == clock.now()


def test_an_expired_verification_link_is_refused_with_400(
    app: Flask, client: FlaskClient, session: Session, outbox: Outbox, clock: FixedClock
) -> None:
    signup(client)
    link = outbox.last_link(NEW["email"], "/verify-email")
    clock.advance(seconds=app.config["EMAIL_VERIFY_MAX_AGE"] + 1)

    response = client.get(link)

    body = response.get_data(as_text=True)
    assert response.status_code == 400
    assert "This link has expired. Ask for a new one." in body
    assert ">Send the link again</button>" in body
    assert session.scalars(select(Reader)).one().email_verified_at is None


def test_a_forged_verification_link_is_refused_with_400(client: FlaskClient) -> None:
    response = client.get("/verify-email?token=not-a-real-token")
    body = response.get_data(as_text=True)
    assert response.status_code == 400
    assert "This link is not valid" in body
    assert "Send the link again" not in body


def test_sending_the_link_again_mails_a_fresh_working_link(
    client: FlaskClient, outbox: Outbox, clock: FixedClock
) -> None:
    signup(client)
    clock.advance(days=3)

    response = client.post(
        "/verify-email/resend", data={"csrf_token": csrf_token(client, "/verify-email")}
    )

    assert response.status_code == 302
    assert response.headers["Location"] == "/verify-email"
    assert len(outbox.all(NEW["email"])) == 2
    assert client.get(outbox.last_link(NEW["email"], "/verify-email")).status_code == 302


def test_signup_with_an_existing_address_looks_the_same_as_a_new_one(
    app: Flask, session: Session, outbox: Outbox, reader: Reader
) -> None:
    newcomer, intruder = app.test_client(), app.test_client()

    fresh = signup(newcomer, email="someone.new@example.org")
    taken = signup(intruder, email="Reader@Example.org")

    assert (taken.status_code, taken.headers["Location"]) == (
        fresh.status_code,
        fresh.headers["Location"],
    )
    fresh_page = newcomer.get(fresh.headers["Location"])
    taken_page = intruder.get(taken.headers["Location"])
    assert taken_page.status_code == fresh_page.status_code == 200
    # Each page names the address typed, and nothing else tells them apart.
    taken_main = main_of(taken_page.get_data(as_text=True))
    fresh_main = main_of(fresh_page.get_data(as_text=True))
    assert "reader@example.org" in taken_main
    assert "someone.new@example.org" in fresh_main
    assert without_csrf(taken_main.replace("reader@example.org", "ADDRESS")) == without_csrf(
        fresh_main.replace("someone.new@example.org", "ADDRESS")
    )
    # Only the owner of the address learns what happened, and nobody got into their account.
    [warning] = outbox.all("reader@example.org")
    assert warning.subject == "Someone tried to sign up with your address"
    assert "http://localhost/login" in warning.body
    assert "http://localhost/password/reset" in warning.body
    assert not is_logged_in(intruder)
    assert count_readers(session) == 2
    session.refresh(reader)
    assert reader.name == "Rita Reader"


@pytest.mark.parametrize(
    ("changes", "fields"),
    [
        ({"email": ""}, ["email"]),
        ({"email": "not-an-address"}, ["email"]),
        ({"password": "short"}, ["password"]),
        ({"name": "   "}, ["name"]),
        ({"country": ""}, ["country"]),
        ({"country": "XX"}, ["country"]),
        (
            {"email": "", "password": "", "name": "", "country": ""},
            ["email", "password", "name", "country"],
        ),
        # The service's own rule (not the e-mail itself) comes back next to the field too.
        ({"email": "longname@example.org", "password": "longname@example.org"}, ["password"]),
    ],
)
def test_invalid_signup_input_is_refused_with_400_next_to_the_field(
    client: FlaskClient,
    session: Session,
    outbox: Outbox,
    changes: dict[str, str],
    fields: list[str],
) -> None:
    response = signup(client, **changes)

    body = response.get_data(as_text=True)
    assert response.status_code == 400
    for name in fields:
        assert f'data-field="{name}"' in body
        assert f'aria-describedby="{name}-error' in body or f"{name}-help {name}-error" in body
    assert count_readers(session) == 0
    assert outbox.all() == []


def test_a_refused_signup_keeps_what_was_typed_except_the_password(client: FlaskClient) -> None:
    body = signup(client, password="short").get_data(as_text=True)
    assert 'value="ada@example.org"' in body
    assert 'value="Ada Reader"' in body
    assert re.search(r'<option (selected value="BE"|value="BE" selected)>', body)
    assert re.search(r'<input[^>]*name="password"[^>]*value=""', body)


# Log-in and log-out ----------------------------------------------------------------------------


def test_logging_in_goes_to_the_account(client: FlaskClient, reader: Reader) -> None:
    response = log_in(client, "READER@example.org ")
    assert response.status_code == 302
    assert response.headers["Location"] == "/account"
    assert is_logged_in(client)


@pytest.mark.parametrize(
    ("next_path", "target"),
    [
        ("/account/password", "/account/password"),
        ("https://evil.example/phish", "/account"),
        ("//evil.example/phish", "/account"),
        ("/\\evil.example", "/account"),
    ],
)
def test_login_follows_next_only_to_local_pages(
    client: FlaskClient, reader: Reader, next_path: str, target: str
) -> None:
    path = f"/login?next={next_path}"
    response = client.post(
        path,
        data={
            "email": reader.email,
            "password": factories.PASSWORD,
            "csrf_token": csrf_token(client, path),
        },
    )
    assert response.status_code == 302
    assert response.headers["Location"] == target


def test_a_guest_sent_to_the_login_comes_back_where_they_were_going(
    client: FlaskClient, reader: Reader
) -> None:
    bounced = client.get("/account/email")
    assert bounced.status_code == 302
    login_path = bounced.headers["Location"]
    assert login_path.startswith("/login?next=")
    response = client.post(
        login_path,
        data={
            "email": reader.email,
            "password": factories.PASSWORD,
            "csrf_token": csrf_token(client, login_path),
        },
    )
    assert response.headers["Location"] == "/account/email"


def test_an_unknown_address_and_a_wrong_password_get_the_same_answer(
    app: Flask, reader: Reader
) -> None:
    unknown = log_in(app.test_client(), "nobody@example.org", "whatever password")
    wrong = log_in(app.test_client(), reader.email, "not the password")

    assert unknown.status_code == wrong.status_code == 400
    # Both keep the address as typed (so the reader need not type it again), and differ in
    # nothing else.
    assert 'value="nobody@example.org"' in unknown.get_data(as_text=True)
    assert without_csrf(unknown.get_data(as_text=True).replace("nobody@example.org", "X")) == (
        without_csrf(wrong.get_data(as_text=True).replace(reader.email, "X"))
    )
    assert "E-mail or password is not correct." in wrong.get_data(as_text=True)


@pytest.mark.parametrize(
    ("data", "fields"),
    [
        ({"email": "", "password": "something"}, ["email"]),
        ({"email": "no-at-sign", "password": "something"}, ["email"]),
        ({"email": "reader@example.org", "password": ""}, ["password"]),
        ({"email": "", "password": ""}, ["email", "password"]),
    ],
)
def test_invalid_login_input_is_refused_with_400_next_to_the_field(
    client: FlaskClient, data: dict[str, str], fields: list[str]
) -> None:
    response = post_form(client, "/login", data)
    body = response.get_data(as_text=True)
    assert response.status_code == 400
    for name in fields:
        assert f'data-field="{name}"' in body


def test_logging_out_ends_the_session(client: FlaskClient, reader: Reader) -> None:
    log_in(client, reader.email)

    response = client.post("/logout", data={"csrf_token": csrf_token(client, "/account")})

    assert response.status_code == 302
    assert response.headers["Location"] == "/login"
    assert not is_logged_in(client)


@pytest.mark.parametrize(
    ("path", "data"),
    [
        ("/signup", NEW),
        ("/login", {"email": "reader@example.org", "password": factories.PASSWORD}),
        ("/logout", {}),
        ("/password/reset", {"email": "reader@example.org"}),
        ("/verify-email/resend", {}),
    ],
)
def test_a_form_posted_without_its_csrf_token_is_refused(
    client: FlaskClient, session: Session, reader: Reader, path: str, data: dict[str, str]
) -> None:
    response = client.post(path, data=data)
    assert response.status_code == 400
    assert "This form has expired" in response.get_data(as_text=True)
    assert count_readers(session) == 1


def test_a_logged_in_reader_cannot_be_logged_out_by_another_site(
    client: FlaskClient, reader: Reader
) -> None:
    log_in(client, reader.email)
    assert client.post("/logout").status_code == 400
    assert is_logged_in(client)


@pytest.fixture
def strict_login_limit(app_config: dict[str, Any]) -> None:
    """Allow three log-in attempts a minute (set before the app is created)."""
    app_config["RATELIMIT_LOGIN"] = "3 per minute"


@pytest.mark.usefixtures("strict_login_limit")
def test_too_many_login_attempts_are_answered_429(client: FlaskClient, reader: Reader) -> None:
    statuses = [log_in(client, reader.email, "wrong password").status_code for _ in range(3)]
    blocked = log_in(client, reader.email, factories.PASSWORD)

    assert statuses == [400, 400, 400]
    assert blocked.status_code == 429
    assert "Too many attempts" in blocked.get_data(as_text=True)
    assert client.get("/login").status_code == 200


# Password reset --------------------------------------------------------------------------------


def request_reset(client: FlaskClient, email: str) -> Any:
    """Submit the reset request form."""
    return post_form(client, "/password/reset", {"email": email})


def test_a_reset_request_answers_the_same_for_known_and_unknown_addresses(
    app: Flask, outbox: Outbox, reader: Reader
) -> None:
    known_client, unknown_client = app.test_client(), app.test_client()
    known = request_reset(known_client, reader.email)
    unknown = request_reset(unknown_client, "nobody@example.org")

    assert (known.status_code, known.headers["Location"]) == (
        unknown.status_code,
        unknown.headers["Location"],
    )
    known_page = known_client.get(known.headers["Location"])
    unknown_page = unknown_client.get(unknown.headers["Location"])
    assert known_page.status_code == unknown_page.status_code == 200
    assert without_csrf(known_page.get_data(as_text=True)) == without_csrf(
        unknown_page.get_data(as_text=True)
    )
    assert "If an account exists for that address, we have sent a link" in known_page.get_data(
        as_text=True
    )
    assert [m.to for m in outbox.all()] == [reader.email]


@pytest.mark.parametrize("email", ["", "not an address"])
def test_an_invalid_reset_request_is_refused_next_to_the_field(
    client: FlaskClient, outbox: Outbox, email: str
) -> None:
    response = request_reset(client, email)
    assert response.status_code == 400
    assert 'data-field="email"' in response.get_data(as_text=True)
    assert outbox.all() == []


def set_new_password(
    client: FlaskClient, link: str, password: str, confirm: str | None = None
) -> Any:
    """Submit the new-password form of a reset link."""
    return post_form(
        client,
        link,
        {"password": password, "password_confirm": password if confirm is None else confirm},
    )


def test_a_reset_link_sets_the_new_password_once_and_logs_the_reader_in(
    app: Flask, session: Session, outbox: Outbox, reader: Reader
) -> None:
    client = app.test_client()
    request_reset(client, reader.email)
    link = outbox.last_link(reader.email, "/password/reset/")
    page = client.get(link)
    assert page.status_code == 200
    assert ">Set new password</button>" in page.get_data(as_text=True)

    response = set_new_password(client, link, "a brand new password")

    assert response.status_code == 302
    assert response.headers["Location"] == "/account"
    assert is_logged_in(client)
    assert log_in(app.test_client(), reader.email, "a brand new password").status_code == 302
    assert log_in(app.test_client(), reader.email, factories.PASSWORD).status_code == 400
    used = client.get(link)
    assert used.status_code == 400
    assert "already used" in used.get_data(as_text=True)
    assert session.scalar(select(AuditLog.action)) == "account.password_reset"


def test_a_used_reset_link_cannot_set_a_password_again(
    app: Flask, outbox: Outbox, reader: Reader
) -> None:
    client = app.test_client()
    request_reset(client, reader.email)
    link = outbox.last_link(reader.email, "/password/reset/")
    token = csrf_token(client, link)
    set_new_password(client, link, "a brand new password")

    again = client.post(
        link,
        data={
            "password": "attacker password",
            "password_confirm": "attacker password",
            "csrf_token": token,
        },
    )

    assert again.status_code == 400
    assert log_in(app.test_client(), reader.email, "attacker password").status_code == 400


def test_resetting_the_password_kills_older_links_and_a_newer_one_works(
    app: Flask, outbox: Outbox, clock: FixedClock, reader: Reader
) -> None:
    client = app.test_client()
    request_reset(client, reader.email)
    first = outbox.last_link(reader.email, "/password/reset/")
    clock.advance(minutes=5)
    request_reset(client, reader.email)
    second = outbox.last_link(reader.email, "/password/reset/")
    assert first != second

    assert set_new_password(client, second, "a brand new password").status_code == 302
    assert client.get(first).status_code == 400

    request_reset(client, reader.email)
    third = outbox.last_link(reader.email, "/password/reset/")
    assert client.get(third).status_code == 200
    assert set_new_password(client, third, "yet another password").status_code == 302
    assert log_in(app.test_client(), reader.email, "yet another password").status_code == 302


def test_an_expired_reset_link_is_refused(
    app: Flask, client: FlaskClient, outbox: Outbox, clock: FixedClock, reader: Reader
) -> None:
    request_reset(client, reader.email)
    link = outbox.last_link(reader.email, "/password/reset/")
    clock.advance(seconds=app.config["PASSWORD_RESET_MAX_AGE"] + 1)

    response = client.get(link)

    assert response.status_code == 400
    assert "This link has expired" in response.get_data(as_text=True)


@pytest.mark.parametrize(
    ("password", "confirm", "field"),
    [
        ("short", "short", "password"),
        ("", "", "password"),
        ("a brand new password", "a different password", "password_confirm"),
        ("a brand new password", "", "password_confirm"),
        ("reader@example.org", "reader@example.org", "password"),
    ],
)
def test_an_invalid_new_password_is_refused_next_to_the_field(
    client: FlaskClient, outbox: Outbox, reader: Reader, password: str, confirm: str, field: str
) -> None:
    request_reset(client, reader.email)
    link = outbox.last_link(reader.email, "/password/reset/")

    response = set_new_password(client, link, password, confirm)

    assert response.status_code == 400
    assert f'data-field="{field}"' in response.get_data(as_text=True)
    assert client.get(link).status_code == 200, "a refused attempt does not use up the link"
