"""The paywall redirect ``/access``: where readers may be sent back to, the tokens they carry,
the offers a reader without access sees, and ``next`` through log-in, sign-up, verification
and trial start."""

from __future__ import annotations

import html
import re
from datetime import timedelta
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from flask import Flask
from sqlalchemy.orm import Session

from billing.clock import FixedClock
from billing.models import ApiClient, Reader
from billing.services import api_clients, token_keys
from billing.services.tokens import AccessClaims, TokenInvalid, TokenKey, TokenSigner
from billing.views.access import access_path
from billing.views.guards import safe_next
from tests import factories
from tests.conftest import START, Outbox, csrf_token, post_form
from tests.helpers import login

SITE = "https://news.example.com"
ARTICLE = f"{SITE}/politics/coalition-talks?ref=paywall"
TOKEN = re.compile(r"#tollgate_token=([A-Za-z0-9_.-]+)$")
SITE_KEYS: dict[str, tuple[str, TokenKey]] = {}
"""The token key each client was given when created (shown once), by kid: what the site holds."""


@pytest.fixture
def news(session: Session, clock: FixedClock) -> ApiClient:
    """The newspaper's API client: readers may be sent back to https://news.example.com."""
    client, _key, token_key = api_clients.create(
        session,
        name="The newspaper",
        scopes=["entitlements:read"],
        allowed_origins=[SITE],
        created_by=None,
        now=clock.now(),
    )
    session.commit()
    SITE_KEYS[token_key.kid] = (client.public_id, token_key)
    return client


@pytest.fixture
def other(session: Session, clock: FixedClock) -> ApiClient:
    """Another client, allowed to send readers to https://other.example.org only."""
    client, _key, token_key = api_clients.create(
        session,
        name="Another site",
        scopes=["entitlements:read"],
        allowed_origins=["https://other.example.org"],
        created_by=None,
        now=clock.now(),
    )
    session.commit()
    SITE_KEYS[token_key.kid] = (client.public_id, token_key)
    return client


@pytest.fixture
def subscriber(session: Session) -> Reader:
    """A reader with an active monthly subscription."""
    subscription = factories.SubscriptionFactory()
    session.commit()
    return subscription.reader  # type: ignore[no-any-return]


def access(client_id: str, return_to: str | None = ARTICLE, **extra: str) -> str:
    """The ``/access`` address a content site links to."""
    params = {"client": client_id, **({"return_to": return_to} if return_to is not None else {})}
    return "/access?" + urlencode({**params, **extra})


def token_in(url: str) -> str:
    """The token in the fragment of ``url``."""
    match = TOKEN.search(url)
    assert match, f"no token in {url!r}"
    return match.group(1)


def verified(url: str, clock: FixedClock) -> AccessClaims:
    """The claims of the token in ``url``, verified the way the content site does."""
    token = token_in(url)
    client_id, key = SITE_KEYS[token[:11]]
    return TokenSigner([key], client_id=client_id).verify(token, now=clock.now())


def error_in(url: str) -> str:
    """The ``tollgate_error`` in the fragment of ``url`` (which carries no token)."""
    assert "tollgate_token" not in url
    match = re.search(r"#tollgate_error=([a-z_]+)$", url)
    assert match, f"no error in {url!r}"
    return match.group(1)


def link(page: str, marker: str) -> str:
    """The (unescaped) ``href`` of the link carrying ``marker`` on ``page``."""
    match = re.search(rf'<a href="([^"]*)"[^>]*{re.escape(marker)}', page)
    assert match, f"no link with {marker} on the page"
    return html.unescape(match.group(1))


def next_of(url: str) -> str:
    """The ``next`` parameter of ``url``, decoded."""
    values = parse_qs(urlsplit(url).query).get("next")
    assert values, f"no next in {url!r}"
    return values[0]


# Where readers may be sent back to -------------------------------------------------------------

REFUSED_RETURN_TO = [
    pytest.param("//evil.example/article", id="scheme-relative"),
    pytest.param("///evil.example/article", id="triple-slash"),
    pytest.param("/politics/article", id="relative-path"),
    pytest.param("news.example.com/article", id="no-scheme"),
    pytest.param("https:evil.example", id="scheme-without-slashes"),
    pytest.param("https:/evil.example", id="scheme-one-slash"),
    pytest.param("https:///evil.example", id="scheme-three-slashes"),
    pytest.param("https://news.example.com@evil.example/", id="userinfo-allowed-host"),
    pytest.param("https://reader:pw@news.example.com/", id="userinfo-on-allowed-host"),
    pytest.param("https://evil.example\\@news.example.com/", id="backslash-userinfo"),
    pytest.param("https://news.example.com\\evil.example/", id="backslash-host"),
    pytest.param("https:\\\\evil.example/", id="backslashes-for-slashes"),
    pytest.param("/\\evil.example/", id="slash-backslash"),
    pytest.param("%2F%2Fevil.example", id="encoded-scheme-relative"),
    pytest.param("https%3A%2F%2Fevil.example", id="encoded-whole-url"),
    pytest.param("https://news.example.com%2F@evil.example/", id="encoded-slash-userinfo"),
    pytest.param("https://news.example.com%40evil.example/", id="encoded-at"),
    pytest.param("https://evil%2Eexample/", id="encoded-dot"),
    pytest.param("https://news.example.com.evil.com/", id="allowed-host-as-subdomain"),
    pytest.param("https://evilnews.example.com/", id="allowed-host-as-suffix"),
    pytest.param("https://evil.com/news.example.com", id="allowed-host-in-path"),
    pytest.param("https://evil.com/?https://news.example.com", id="allowed-host-in-query"),
    pytest.param("https://evil.com#https://news.example.com", id="allowed-host-in-fragment"),
    pytest.param("https://news.example.com:8443/", id="other-port"),
    pytest.param("https://news.example.com:0/", id="port-zero"),
    pytest.param("https://news.example.com:443.evil.com/", id="port-then-host"),
    pytest.param("https://news.example.com:99999/", id="port-out-of-range"),
    pytest.param("http://news.example.com/", id="other-scheme"),
    pytest.param("ftp://news.example.com/", id="ftp"),
    pytest.param("javascript:alert(document.cookie)", id="javascript"),
    pytest.param("javascript://news.example.com/%0Aalert(1)", id="javascript-comment"),
    pytest.param("JaVaScRiPt:alert(1)", id="javascript-mixed-case"),
    pytest.param("data:text/html,<script>alert(1)</script>", id="data-url"),
    pytest.param(" https://news.example.com/", id="leading-space"),
    pytest.param("https://news.example.com/ ", id="trailing-space"),
    pytest.param("https://news.example.com/a b", id="inner-space"),
    pytest.param("\thttps://evil.example/", id="leading-tab"),
    pytest.param("https://news.example.com/\t", id="trailing-tab"),
    pytest.param("https://news.example.com/\r\nLocation: https://evil.example/", id="crlf"),
    pytest.param("https://news.example.com/\x00", id="nul"),
    pytest.param("https://news\x00.example.com/", id="nul-in-host"),
    pytest.param("https://evil.example\x0b/", id="vertical-tab"),
    pytest.param("https://n\u0435ws.example.com/", id="cyrillic-e-homoglyph"),
    pytest.param("https://\uff4eews.example.com/", id="fullwidth-n"),
    pytest.param("https://news.example.com\u3002evil.com/", id="ideographic-full-stop"),
    pytest.param("https://news.example.com\u2044evil.com/", id="fraction-slash"),
    pytest.param("https://news.example.com./", id="trailing-dot"),
    pytest.param("https://news.example.com//evil.example/x", id="double-slash-path"),
    pytest.param("https://[::1]/", id="ipv6-literal"),
    pytest.param("https://[news.example.com]/", id="bad-brackets"),
    pytest.param("https://news.example.com" + "/a" * 1100, id="too-long"),
    pytest.param("", id="empty"),
]


@pytest.mark.parametrize("return_to", REFUSED_RETURN_TO)
def test_a_return_to_off_the_clients_origins_is_refused_with_400_and_no_redirect(
    app: Flask, news: ApiClient, subscriber: Reader, return_to: str
) -> None:
    browser = app.test_client()
    login(browser, subscriber)  # a reader who would be sent back at once
    for extra in ({}, {"prompt": "none"}):
        response = browser.get(access(news.public_id, return_to, **extra))
        assert response.status_code == 400
        assert "Location" not in response.headers
        assert "tollgate_token" not in response.get_data(as_text=True)
        assert 'data-problem="bad_access_link"' in response.get_data(as_text=True)


def test_a_missing_return_to_is_refused_with_400(app: Flask, news: ApiClient) -> None:
    response = app.test_client().get(access(news.public_id, None))
    assert response.status_code == 400
    assert "where to send you back" in response.get_data(as_text=True)


def test_an_origin_allowed_for_another_client_is_refused(
    app: Flask, news: ApiClient, other: ApiClient
) -> None:
    response = app.test_client().get(access(news.public_id, "https://other.example.org/a"))
    assert response.status_code == 400
    assert "Location" not in response.headers


@pytest.mark.parametrize(
    ("return_to", "sent_to"),
    [
        (ARTICLE, ARTICLE),
        ("https://news.example.com", "https://news.example.com/"),
        ("https://NEWS.Example.COM/a", "https://news.example.com/a"),
        ("HTTPS://news.example.com/a", "https://news.example.com/a"),
        ("https://news.example.com:443/a", "https://news.example.com/a"),
        ("https://news.example.com/a#comments", "https://news.example.com/a"),
        (
            "https://news.example.com/a?q=%2F%2Fevil.example",
            "https://news.example.com/a?q=%2F%2Fevil.example",
        ),
    ],
)
def test_an_allowed_origin_written_another_way_stays_on_that_origin(
    app: Flask, news: ApiClient, subscriber: Reader, return_to: str, sent_to: str
) -> None:
    browser = app.test_client()
    login(browser, subscriber)
    response = browser.get(access(news.public_id, return_to))
    assert response.status_code == 302
    location = response.headers["Location"]
    assert location.split("#")[0] == sent_to
    assert urlsplit(location).hostname == "news.example.com"


@pytest.mark.parametrize(
    ("client_id", "message"),
    [
        ("", "which site sent you"),
        ("cli_unknown", "not known to us"),
        ("cli_" + "x" * 200, "not known to us"),
    ],
)
def test_an_unknown_client_gets_a_clear_400_page(
    app: Flask, news: ApiClient, client_id: str, message: str
) -> None:
    response = app.test_client().get(access(client_id))
    assert response.status_code == 400
    assert "Location" not in response.headers
    assert message in response.get_data(as_text=True)


def test_a_revoked_client_gets_a_clear_400_page(
    app: Flask, session: Session, news: ApiClient, subscriber: Reader, clock: FixedClock
) -> None:
    api_clients.revoke(news, now=clock.now())
    session.commit()
    browser = app.test_client()
    login(browser, subscriber)
    response = browser.get(access(news.public_id))
    assert response.status_code == 400
    assert "Location" not in response.headers
    assert "no longer" in response.get_data(as_text=True)


# A reader with access goes straight back -------------------------------------------------------


def test_a_subscriber_is_sent_straight_back_with_a_token_in_the_fragment(
    app: Flask, news: ApiClient, subscriber: Reader, clock: FixedClock
) -> None:
    browser = app.test_client()
    login(browser, subscriber)
    response = browser.get(access(news.public_id))

    assert response.status_code == 302
    location = response.headers["Location"]
    assert location.startswith(ARTICLE + "#tollgate_token=")
    assert response.headers["Cache-Control"] == "no-store"
    claims = verified(location, clock)
    assert claims.reason == "subscription"
    assert claims.plan == "individual-monthly"
    assert claims.client_id == news.public_id
    assert claims.reader_id == subscriber.public_id
    assert claims.until == START + timedelta(days=30)
    assert claims.expires_at == START + timedelta(minutes=15)


def test_a_reader_on_trial_gets_a_token_saying_trial_until_its_end(
    app: Flask, session: Session, news: ApiClient, clock: FixedClock
) -> None:
    trial = factories.TrialFactory()
    session.commit()
    browser = app.test_client()
    login(browser, trial.reader)
    response = browser.get(access(news.public_id))
    assert response.status_code == 302
    claims = verified(response.headers["Location"], clock)
    assert (claims.reason, claims.plan) == ("trial", None)
    assert claims.until == trial.ends_at


def test_after_one_of_our_forms_the_reader_goes_back_through_a_page_that_moves_on(
    app: Flask, news: ApiClient, subscriber: Reader, clock: FixedClock
) -> None:
    # A browser refuses to follow a form's redirects to another site (form-action 'self').
    browser = app.test_client()
    login(browser, subscriber)
    response = browser.get(access(news.public_id), headers={"Sec-Fetch-Site": "same-origin"})

    assert response.status_code == 200
    page = response.get_data(as_text=True)
    refresh = re.search(r'<meta http-equiv="refresh" content="0;url=([^"]+)">', page)
    assert refresh
    destination = html.unescape(refresh.group(1))
    assert destination.startswith(ARTICLE + "#tollgate_token=")
    assert link(page, "data-continue") == destination
    assert verified(destination, clock).reason == "subscription"
    assert response.headers["Cache-Control"] == "no-store"


def test_a_link_from_the_content_site_is_answered_with_a_redirect(
    app: Flask, news: ApiClient, subscriber: Reader
) -> None:
    browser = app.test_client()
    login(browser, subscriber)
    for site in ("same-site", "cross-site", "none"):
        response = browser.get(access(news.public_id), headers={"Sec-Fetch-Site": site})
        assert response.status_code == 302


def test_a_grant_that_ends_within_the_second_is_not_issued_as_a_dead_token(
    app: Flask, session: Session, news: ApiClient, clock: FixedClock
) -> None:
    trial = factories.TrialFactory(
        started_at=START - timedelta(days=14), ends_at=START + timedelta(milliseconds=500)
    )
    session.commit()
    browser = app.test_client()
    login(browser, trial.reader)
    response = browser.get(access(news.public_id, prompt="none"))
    assert response.status_code == 302
    assert error_in(response.headers["Location"]) == "access_denied"


# A reader without access -----------------------------------------------------------------------


def test_a_reader_whose_trial_ended_sees_why_and_goes_back_without_a_token(
    app: Flask, session: Session, news: ApiClient, clock: FixedClock
) -> None:
    trial = factories.TrialFactory(started_at=START - timedelta(days=20))
    session.commit()
    browser = app.test_client()
    login(browser, trial.reader)
    response = browser.get(access(news.public_id))

    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert 'data-reason="trial_expired"' in page
    assert "your free trial has ended" in page
    assert 'data-offer="trial"' not in page
    assert "already used your free trial" in page
    here = access_path(news.public_id, ARTICLE)
    assert next_of(link(page, 'data-offer="subscribe"')) == here

    assert link(page, "data-back") == ARTICLE + "#tollgate_error=access_denied"


def test_a_reader_who_never_had_a_trial_is_offered_one_that_comes_back_here(
    app: Flask, session: Session, news: ApiClient, clock: FixedClock
) -> None:
    reader = factories.reader()
    session.commit()
    browser = app.test_client()
    login(browser, reader)
    page = browser.get(access(news.public_id)).get_data(as_text=True)

    assert 'data-reason="none"' in page
    trial_link = link(page, 'data-offer="trial"')
    assert urlsplit(trial_link).path == "/trial"
    assert next_of(trial_link) == access_path(news.public_id, ARTICLE)
    assert error_in(link(page, "data-back")) == "access_denied"


def test_an_unverified_reader_can_ask_for_the_link_again_and_still_come_back(
    app: Flask, session: Session, news: ApiClient, outbox: Outbox
) -> None:
    reader = factories.reader(email="new@example.org", email_verified_at=None)
    session.commit()
    browser = app.test_client()
    login(browser, reader)
    page = browser.get(access(news.public_id)).get_data(as_text=True)

    assert 'data-reason="email_unverified"' in page
    assert 'data-offer="trial"' not in page
    action = re.search(r'action="(/verify-email/resend[^"]*)"', page)
    assert action
    resend = html.unescape(action.group(1))
    here = access_path(news.public_id, ARTICLE)
    assert next_of(resend) == here
    response = post_form(browser, resend, {})
    assert response.status_code == 302
    assert next_of(outbox.last_link("new@example.org", "/verify-email")) == here


def test_prompt_none_sends_a_reader_without_access_back_with_access_denied_and_no_token(
    app: Flask, session: Session, news: ApiClient
) -> None:
    trial = factories.TrialFactory(started_at=START - timedelta(days=20))
    session.commit()
    browser = app.test_client()
    login(browser, trial.reader)
    response = browser.get(access(news.public_id, prompt="none"))
    assert response.status_code == 302
    assert response.headers["Location"] == ARTICLE + "#tollgate_error=access_denied"


def test_prompt_none_sends_a_visitor_back_with_login_required_and_no_token(
    app: Flask, news: ApiClient
) -> None:
    response = app.test_client().get(access(news.public_id, prompt="none"))
    assert response.status_code == 302
    assert response.headers["Location"] == ARTICLE + "#tollgate_error=login_required"
    assert "tollgate_token" not in response.get_data(as_text=True)


def test_a_logged_out_reader_gets_no_new_token(
    app: Flask, news: ApiClient, subscriber: Reader, clock: FixedClock
) -> None:
    browser = app.test_client()
    login(browser, subscriber)
    assert verified(browser.get(access(news.public_id)).headers["Location"], clock).reader_id
    browser.post("/logout", data={"csrf_token": csrf_token(browser, "/account/password")})

    response = browser.get(access(news.public_id, prompt="none"))
    assert error_in(response.headers["Location"]) == "login_required"


def test_the_token_is_signed_with_the_clients_own_key_and_names_it(
    app: Flask, news: ApiClient, other: ApiClient, subscriber: Reader, clock: FixedClock
) -> None:
    browser = app.test_client()
    login(browser, subscriber)
    token = token_in(browser.get(access(news.public_id)).headers["Location"])

    client_id, key = SITE_KEYS[token[:11]]
    assert client_id == news.public_id
    other_key = next(k for c, k in SITE_KEYS.values() if c == other.public_id)
    with pytest.raises(TokenInvalid):
        TokenSigner([other_key], client_id=other.public_id).verify(token, now=clock.now())
    with pytest.raises(TokenInvalid, match="another API client"):
        TokenSigner([key, other_key], client_id=other.public_id).verify(token, now=clock.now())


def test_a_client_whose_token_keys_are_all_revoked_gets_a_clear_400_page(
    app: Flask, session: Session, news: ApiClient, subscriber: Reader, clock: FixedClock
) -> None:
    for key in token_keys.keys_of(session, news.id):
        token_keys.revoke(key, now=clock.now())
    session.commit()
    browser = app.test_client()
    login(browser, subscriber)
    response = browser.get(access(news.public_id))
    assert response.status_code == 400
    assert "not set up to receive readers" in response.get_data(as_text=True)
    assert "Location" not in response.headers


# A visitor who is not logged in ----------------------------------------------------------------


def test_a_visitor_sees_the_offers_and_every_one_leads_back_here(
    app: Flask, news: ApiClient
) -> None:
    response = app.test_client().get(access(news.public_id))
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    page = response.get_data(as_text=True)
    here = access_path(news.public_id, ARTICLE)
    assert safe_next(here, "/refused") == here

    assert "Get instant access to all articles and 20 years of archives" in page
    assert "Access through my organisation" in page
    login_link = link(page, 'data-offer="login"')
    assert urlsplit(login_link).path == "/login"
    assert next_of(login_link) == here

    trial_link = link(page, 'data-offer="trial"')
    assert urlsplit(trial_link).path == "/signup"
    assert urlsplit(next_of(trial_link)).path == "/trial"
    assert next_of(next_of(trial_link)) == here

    subscribe_link = link(page, 'data-offer="subscribe"')
    assert urlsplit(subscribe_link).path == "/signup"
    assert urlsplit(next_of(subscribe_link)).path == "/subscribe"
    assert next_of(next_of(subscribe_link)) == here

    assert link(page, "data-back") == ARTICLE
    assert "tollgate_token" not in page


# next through log-in, sign-up, verification and trial start -------------------------------------


def test_logging_in_from_the_offers_comes_back_with_a_token(
    app: Flask, news: ApiClient, subscriber: Reader, clock: FixedClock
) -> None:
    browser = app.test_client()
    page = browser.get(access(news.public_id)).get_data(as_text=True)
    login_link = link(page, 'data-offer="login"')
    here = access_path(news.public_id, ARTICLE)

    response = post_form(
        browser, login_link, {"email": subscriber.email, "password": factories.PASSWORD}
    )
    assert response.status_code == 302
    assert response.headers["Location"] == here

    back = browser.get(here)
    assert back.status_code == 302
    assert verified(back.headers["Location"], clock).reason == "subscription"


def test_sign_up_verification_and_trial_start_come_back_with_a_trial_token(
    app: Flask, news: ApiClient, outbox: Outbox, clock: FixedClock
) -> None:
    browser = app.test_client()
    page = browser.get(access(news.public_id)).get_data(as_text=True)
    signup_link = link(page, 'data-offer="trial"')
    here = access_path(news.public_id, ARTICLE)
    trial_path = next_of(signup_link)

    signup_page = browser.get(signup_link).get_data(as_text=True)
    log_in_instead = re.search(r'Already have an account\? <a href="([^"]*)"', signup_page)
    assert log_in_instead
    assert next_of(html.unescape(log_in_instead.group(1))) == trial_path
    response = post_form(
        browser,
        signup_link,
        {
            "email": "ada@example.org",
            "password": factories.PASSWORD,
            "name": "Ada",
            "country": "BE",
        },
    )
    assert response.status_code == 302
    check_inbox = response.headers["Location"]
    assert urlsplit(check_inbox).path == "/verify-email"
    assert next_of(check_inbox) == trial_path
    resend = re.search(
        r'action="(/verify-email/resend[^"]*)"', browser.get(check_inbox).get_data(as_text=True)
    )
    assert resend
    assert next_of(html.unescape(resend.group(1))) == trial_path

    verify_link = outbox.last_link("ada@example.org", "/verify-email")
    assert next_of(verify_link) == trial_path
    response = browser.get(verify_link)
    assert response.status_code == 302
    assert response.headers["Location"] == trial_path

    trial_page = browser.get(trial_path).get_data(as_text=True)
    assert "Start free trial" in trial_page
    response = post_form(browser, trial_path, {})
    assert response.status_code == 302
    assert response.headers["Location"] == here

    back = browser.get(here)
    assert back.status_code == 302
    claims = verified(back.headers["Location"], clock)
    assert claims.reason == "trial"
    assert claims.until == START + timedelta(days=14)


def test_the_check_your_inbox_page_sends_the_link_again_with_next(
    app: Flask, session: Session, news: ApiClient, outbox: Outbox
) -> None:
    reader = factories.reader(email="late@example.org", email_verified_at=None)
    session.commit()
    browser = app.test_client()
    login(browser, reader)
    here = access_path(news.public_id, ARTICLE)
    check_inbox = "/verify-email?" + urlencode({"next": here})
    page = browser.get(check_inbox).get_data(as_text=True)
    action = re.search(r'action="(/verify-email/resend[^"]*)"', page)
    assert action
    assert next_of(html.unescape(action.group(1))) == here

    response = post_form(browser, html.unescape(action.group(1)), {})
    assert response.status_code == 302
    assert next_of(response.headers["Location"]) == here
    assert next_of(outbox.last_link("late@example.org", "/verify-email")) == here


@pytest.mark.parametrize(
    "next_path", ["https://evil.example/", "//evil.example/", "/\\evil.example", "javascript:x"]
)
def test_a_foreign_next_is_dropped_on_the_way(
    app: Flask, outbox: Outbox, session: Session, next_path: str
) -> None:
    browser = app.test_client()
    signup = "/signup?" + urlencode({"next": next_path})
    response = post_form(
        browser,
        signup,
        {
            "email": "eve@example.org",
            "password": factories.PASSWORD,
            "name": "Eve",
            "country": "BE",
        },
    )
    assert response.headers["Location"] == "/verify-email"
    verify_link = outbox.last_link("eve@example.org", "/verify-email")
    assert "next=" not in verify_link
    assert browser.get(verify_link).headers["Location"] == "/account"

    reader = factories.reader(email="tom@example.org")
    session.commit()
    login(browser, reader)
    trial = "/trial?" + urlencode({"next": next_path})
    assert post_form(browser, trial, {}).headers["Location"] == "/account"
