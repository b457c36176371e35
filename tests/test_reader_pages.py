"""Pages that tell the truth and carry the publication's brand (test client, mirror factories)."""

from __future__ import annotations

import html
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from sqlalchemy.orm import Session

from billing.branding import brand_from
from billing.cli import DEMO_PLANS
from billing.clock import FixedClock
from billing.config import ConfigError
from billing.errors import ValidationFailed
from billing.models import ApiClient, Reader, SubscriptionStatus, TrialStatus
from billing.services import accounts
from tests import factories
from tests.conftest import BRAND, Outbox, post_form
from tests.helpers import login
from tests.test_access import access, news  # noqa: F401 - the newspaper's API client fixture


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    """The test settings under the demo newspaper's brand."""
    return {**app_config, **BRAND}


def logged_in(app: Flask, reader: Reader) -> FlaskClient:
    """A test client logged in as ``reader`` (password :data:`tests.factories.PASSWORD`)."""
    client = app.test_client()
    response = post_form(client, "/login", {"email": reader.email, "password": factories.PASSWORD})
    assert response.status_code == 302, response.get_data(as_text=True)
    return client


def test_every_page_carries_the_publications_name_home_link_legal_links_and_favicon(
    client: FlaskClient,
) -> None:
    page = client.get("/signup").get_data(as_text=True)
    assert "<title>Create your account · The Daily Meridian</title>" in page
    assert 'href="https://meridian.example" data-brand' in page
    for url in ("terms", "privacy", "imprint"):
        assert f'href="https://meridian.example/{url}"' in page
    assert 'href="mailto:help@meridian.example"' in page
    assert "Tollgate" not in page
    assert "data-terms" in page, "the sign-up form links the terms"
    css = client.get("/brand.css")
    assert css.content_type.startswith("text/css") and "--accent: #8a1c1c" in css.text
    icon = client.get("/favicon.ico")
    assert (
        icon.content_type == "image/svg+xml"
        and 'fill="#8a1c1c"' in icon.text
        and ">T<" in icon.text
    )


def test_an_error_page_is_in_the_brand_too(client: FlaskClient) -> None:
    response = client.get("/no-such-page")
    assert response.status_code == 404
    page = response.get_data(as_text=True)
    assert "The Daily Meridian" in page and 'href="https://meridian.example/imprint"' in page


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("PUBLICATION_ACCENT", "red; background: url(x)"),
        ("PUBLICATION_URL", "javascript:alert(1)"),
        ("SUPPORT_EMAIL", "not an address"),
        ("PUBLICATION_LOGO", "/no/such/logo.svg"),
    ],
)
def test_a_wrong_brand_setting_stops_the_app_naming_the_setting(setting: str, value: str) -> None:
    with pytest.raises(ConfigError, match=setting):
        brand_from({**BRAND, setting: value})


def test_a_logo_file_is_served_and_a_logo_url_is_allowed_by_the_csp(
    app_config: dict[str, Any], tmp_path: Any
) -> None:
    from billing import create_app

    logo = tmp_path / "logo.svg"
    logo.write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    with_file = create_app({**app_config, "PUBLICATION_LOGO": str(logo)}).test_client()
    served = with_file.get("/brand/logo")
    assert (served.data, served.content_type) == (logo.read_bytes(), "image/svg+xml")
    assert 'src="/brand/logo"' in with_file.get("/login").text
    with_url = create_app({**app_config, "PUBLICATION_LOGO": "https://cdn.example/logo.png"})
    response = with_url.test_client().get("/login")
    assert (
        "img-src 'self' data: https://cdn.example;" in response.headers["Content-Security-Policy"]
    )
    assert with_url.test_client().get("/brand/logo").status_code == 404


def test_an_active_subscriber_is_not_offered_a_trial_that_would_be_refused(
    app: Flask, session: Session
) -> None:
    subscription = factories.SubscriptionFactory()
    session.commit()
    page = logged_in(app, subscription.reader).get("/account").get_data(as_text=True)
    assert "Start your free trial" not in page
    assert 'data-trial="not-needed"' in page


def test_a_reader_without_a_trial_is_offered_one_that_starts(app: Flask, session: Session) -> None:
    reader = factories.reader(email="fresh@example.org")
    session.commit()
    page = logged_in(app, reader).get("/account").get_data(as_text=True)
    assert "Start your free trial" in page


def test_a_declined_first_payment_says_payment_failed_not_trial_ended(
    app: Flask, session: Session, clock: FixedClock
) -> None:
    reader = factories.reader(email="declined@example.org")
    factories.TrialFactory(reader=reader, started_at=clock.now() - timedelta(days=30))
    factories.SubscriptionFactory(
        customer=factories.CustomerFactory(reader=reader), status=SubscriptionStatus.INCOMPLETE
    )
    session.commit()
    page = logged_in(app, reader).get("/account").get_data(as_text=True)
    assert 'data-reason="payment_failed"' in page
    assert "your free trial has ended" not in page.lower().split("free trial</h2>")[0]


def test_a_cancelled_subscription_says_until_once(
    app: Flask, session: Session, clock: FixedClock
) -> None:
    subscription = factories.SubscriptionFactory(cancel_at_period_end=True)
    session.commit()
    page = logged_in(app, subscription.reader).get("/account").get_data(as_text=True)
    [line] = [ln for ln in page.splitlines() if "Access: yes" in ln]
    assert line.count("until") == 1, line


def test_a_wrong_password_keeps_the_address_typed(app: Flask, session: Session) -> None:
    reader = factories.reader(email="keep@example.org")
    session.commit()
    response = post_form(
        app.test_client(), "/login", {"email": reader.email, "password": "not the password"}
    )
    assert response.status_code == 400
    assert 'value="keep@example.org"' in response.get_data(as_text=True)


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        ("anna.example.org", "An e-mail address needs an @ sign, like name@example.org."),
        ("@example.org", "Put your name before the @ sign, like name@example.org."),
        ("anna@example", "The part after the @ sign needs a domain such as example.org"),
    ],
)
def test_a_wrong_address_is_explained_in_our_words(typed: str, message: str) -> None:
    with pytest.raises(ValidationFailed) as refused:
        accounts.normalise_email(typed)
    assert refused.value.message.startswith(message)
    assert "email" not in refused.value.message.replace("e-mail", "")


@pytest.mark.parametrize(
    "password", ["1234567890", "password123", "qwertyuiop", "anna@example.org1"]
)
def test_a_password_easy_to_guess_is_refused_saying_why(password: str) -> None:
    with pytest.raises(ValidationFailed, match="too easy to guess") as refused:
        accounts.check_password(password, email="anna@example.org")
    assert refused.value.field == "password"


def test_a_weak_password_is_refused_on_the_signup_form_next_to_the_field(
    client: FlaskClient,
) -> None:
    response = post_form(
        client,
        "/signup",
        {"email": "new@example.org", "password": "1234567890", "name": "N", "country": "BE"},
    )
    assert response.status_code == 400
    assert "This password is too easy to guess" in response.get_data(as_text=True)


def test_check_your_inbox_names_the_address_the_link_went_to(client: FlaskClient) -> None:
    post_form(
        client,
        "/signup",
        {
            "email": "Someone@Example.org",
            "password": factories.PASSWORD,
            "name": "S",
            "country": "BE",
        },
    )
    page = client.get("/verify-email").get_data(as_text=True)
    assert "<strong data-sent-to>someone@example.org</strong>" in page


def test_tick_mails_no_trial_ending_to_a_reader_who_already_subscribed(
    runner: FlaskCliRunner, session: Session, clock: FixedClock, outbox: Outbox
) -> None:
    reader = factories.reader(email="paying@example.org")
    trial = factories.TrialFactory(reader=reader, started_at=clock.now() - timedelta(days=13))
    factories.SubscriptionFactory(customer=factories.CustomerFactory(reader=reader))
    other = factories.TrialFactory(
        reader=factories.reader(email="trying@example.org"),
        started_at=clock.now() - timedelta(days=13),
    )
    session.commit()
    clock.advance(timedelta(days=2))

    result = runner.invoke(args=["billing", "tick"])

    assert result.exit_code == 0, result.output
    assert outbox.all("paying@example.org") == []
    assert [m.subject for m in outbox.all("trying@example.org")] == ["Your free trial has ended"]
    session.expire_all()
    assert (trial.status, other.status) == (TrialStatus.CONVERTED, TrialStatus.EXPIRED)


def test_the_offers_page_shows_the_prices_the_trial_and_when_the_first_charge_would_be(
    client: FlaskClient,
    news: ApiClient,  # noqa: F811 - the fixture imported above
    session: Session,
    clock: FixedClock,
) -> None:
    for code, name, kind, interval, amount in DEMO_PLANS:
        factories.PlanFactory(code=code, name=name, kind=kind, interval=interval, amount=amount)
    session.commit()
    page = html.unescape(client.get(access(news.public_id)).get_data(as_text=True))
    assert "€12.00 a month" in page and "€120.00 a year" in page
    assert "€24.00 less than twelve months" in page
    assert "€96.00 per seat a year" in page
    trial_end = clock.now() + timedelta(days=14)
    assert f"it runs until {trial_end.day} {trial_end:%B %Y}" in page
    assert f"first charged when it ends, on {trial_end.day} {trial_end:%B %Y}" in page


def test_a_logged_in_reader_without_access_sees_the_prices_too(
    client: FlaskClient,
    news: ApiClient,  # noqa: F811 - the fixture imported above
    session: Session,
) -> None:
    for code, name, kind, interval, amount in DEMO_PLANS:
        factories.PlanFactory(code=code, name=name, kind=kind, interval=interval, amount=amount)
    reader = factories.reader(email="lapsed@example.org")
    session.commit()
    login(client, reader)
    page = html.unescape(client.get(access(news.public_id)).get_data(as_text=True))
    assert "Your account has no access right now" in page
    assert "€12.00 a month" in page and "€120.00 a year" in page


def test_start_your_free_trial_goes_straight_to_sign_up_then_the_trial(
    client: FlaskClient,
    news: ApiClient,  # noqa: F811 - the fixture imported above
    session: Session,
) -> None:
    here = access(news.public_id)
    response = client.get(access(news.public_id, offer="trial"))
    assert response.status_code == 302
    location = urlsplit(response.headers["Location"])
    assert location.path == "/signup"
    [after] = parse_qs(location.query)["next"]
    assert urlsplit(after).path == "/trial"
    assert parse_qs(urlsplit(after).query) == {"next": [here]}

    reader = factories.reader(email="ready@example.org")
    session.commit()
    post_form(client, "/login", {"email": reader.email, "password": factories.PASSWORD})
    straight = client.get(access(news.public_id, offer="trial"))
    assert (straight.status_code, urlsplit(straight.headers["Location"]).path) == (302, "/trial")


def test_logging_out_from_a_content_site_asks_first_and_then_logs_out(
    app: Flask, session: Session
) -> None:
    reader = factories.reader(email="leaving@example.org")
    session.commit()
    client = logged_in(app, reader)
    page = client.get("/logout").get_data(as_text=True)
    assert "Log out of your The Daily Meridian account?" in page
    assert post_form(client, "/logout", {}).status_code == 302
    assert client.get("/account").status_code == 302
