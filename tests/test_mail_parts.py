"""Every mail Tollgate sends has a plain-text and an HTML part in the publication's brand: the
account mails (verify, reset, sign-up attempt, e-mail change), the trial mails, the payment
failure and the mails about an organisation's seats (invite, failed or overdue payment, seats
full, an idle seat warned and freed), sent through the outbox to a real SMTP server. (The money
events' mails are checked the same way in ``test_reader_money``.)"""

from __future__ import annotations

import re
from email.message import EmailMessage
from html import escape
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskCliRunner
from sqlalchemy.orm import Session

from billing.clock import FixedClock
from billing.gateway import StripeGateway
from billing.models import SubscriptionStatus
from billing.services import groups, stripe_mirror, trials
from billing.worker import Worker
from tests import factories
from tests.conftest import TEST_SECRET, csrf_token, post_form
from tests.smtp_server import Collector

MAIL_TEMPLATES = Path(__file__).parent.parent / "billing" / "templates" / "mail"
GROUP_MAILS = {
    "group_invite",
    "group_payment_failed",
    "group_seat_idle",
    "group_seat_reclaimed",
    "group_seats_full",
}
"""Mails about an organisation's seats, to its admins, members and invitees."""


@pytest.fixture
def app_config(app_config: dict[str, Any], branded_mail: dict[str, Any]) -> dict[str, Any]:
    """Mail goes to the local SMTP server, under the demo newspaper's brand with its logo."""
    return {**app_config, **branded_mail, "PUBLICATION_LOGO": "https://meridian.example/logo.png"}


class _Html(HTMLParser):
    """What an accessibility check needs of an HTML mail: links, images, the language."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.images: list[dict[str, str | None]] = []
        self.lang: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "a":
            self.hrefs.append(values.get("href") or "")
        elif tag == "img":
            self.images.append(values)
        elif tag == "html":
            self.lang = values.get("lang")


def parts(message: EmailMessage) -> tuple[str, str]:
    """The plain-text and HTML parts of a multipart/alternative mail."""
    assert message.get_content_type() == "multipart/alternative", message["Subject"]
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    return str(text.get_content()), str(html.get_content())


def assert_branded_and_accessible(subject: str, message: EmailMessage) -> tuple[str, str]:
    """Both parts of the mail carry the brand and the footer, the HTML is accessible (language,
    title, alt text), every address in the text is a real link in the HTML, and there is no
    unsubscribe link (these mails are transactional). The two parts."""
    text, html = parts(message)
    found = _Html()
    found.feed(html)
    assert found.lang == "en" and f"<title>{subject}</title>" in html, subject
    assert [image.get("alt") for image in found.images] == ["The Daily Meridian"], subject
    assert "#8a1c1c" in html and "mailto:help@meridian.example" in found.hrefs, subject
    assert "https://meridian.example/terms" in found.hrefs, subject
    assert "The Daily Meridian" in text and "help@meridian.example" in text, subject
    assert "Terms: https://meridian.example/terms" in text, f"{subject}: the text footer"
    links = set(re.findall(r"https?://\S*[^\s.,:;]", text))
    assert links and links <= set(found.hrefs), f"{subject}: every link a real link"
    assert "unsubscribe" not in (text + html).lower(), subject
    return text, html


def test_every_readers_mail_template_has_an_html_part() -> None:
    texts = {p.stem for p in MAIL_TEMPLATES.glob("*.txt") if not p.stem.startswith("_")}
    htmls = {p.stem for p in MAIL_TEMPLATES.glob("*.html") if not p.stem.startswith("_")}

    assert {"verify_email", "password_reset", "trial_reminder", "trial_ended"} <= texts
    assert GROUP_MAILS <= texts
    assert texts - htmls == set()


def test_account_trial_and_payment_mails_arrive_in_both_parts_in_the_publications_brand(
    app: Flask,
    session: Session,
    clock: FixedClock,
    runner: FlaskCliRunner,
    smtp_server: tuple[Collector, int],
) -> None:
    collector, _ = smtp_server
    client = app.test_client()
    new = {"email": "ada@example.org", "password": "a long enough password", "name": "Ada"}
    assert post_form(client, "/signup", {**new, "country": "BE"}).status_code == 302
    assert (
        post_form(
            client,
            "/account/email",
            {
                "password": new["password"],
                "new_email": "ada@elsewhere.example",
            },
        ).status_code
        == 302
    )
    client.post("/logout", data={"csrf_token": csrf_token(client, "/account")})
    assert post_form(client, "/signup", {**new, "country": "BE"}).status_code == 302
    assert post_form(client, "/password/reset", {"email": new["email"]}).status_code == 302
    trial_reader = factories.reader(email="tina@example.org", name="Tina")
    trials.start_trial(session, trial_reader, now=clock.now(), days=14)
    subscription = factories.SubscriptionFactory(status=SubscriptionStatus.PAST_DUE)
    session.commit()
    stripe_mirror.mail_payment_problem(
        session, StripeGateway.from_config(dict(app.config)), subscription, None
    )
    session.commit()
    clock.advance(days=11, minutes=1)
    assert runner.invoke(args=["billing", "tick"]).exit_code == 0
    clock.advance(days=3)
    assert runner.invoke(args=["billing", "tick"]).exit_code == 0

    Worker(app).run_once()

    by_subject = {m["Subject"]: m for m in collector.messages()}
    assert set(by_subject) == {
        "Confirm your e-mail address",
        "Confirm your new e-mail address",
        "Someone tried to sign up with your address",
        "Choose a new password",
        "Your free trial ends in 3 days",
        "Your free trial has ended",
        "Your payment failed",
    }
    for subject, message in by_subject.items():
        assert_branded_and_accessible(subject, message)
    for subject, path in (
        ("Confirm your e-mail address", "/verify-email"),
        ("Choose a new password", "/password/reset/"),
        ("Confirm your new e-mail address", "/account/email/confirm"),
    ):
        text, html = parts(by_subject[subject])
        [link] = re.findall(rf"http://localhost{path}\S+", text)
        assert f">{escape(link)}</a>" in html, f"{subject}: the link shown to copy, if need be"
    _, failed_html = parts(by_subject["Your payment failed"])
    assert "http://localhost/account/card" in failed_html and "Update your card" in failed_html
    _, ended_html = parts(by_subject["Your free trial has ended"])
    assert "http://localhost/subscribe" in ended_html


def test_the_mails_about_an_organisations_seats_arrive_in_both_parts_in_the_publications_brand(
    app: Flask,
    session: Session,
    clock: FixedClock,
    smtp_server: tuple[Collector, int],
) -> None:
    collector, _ = smtp_server
    rules = groups.GroupRules()
    admin = factories.reader(email="boss@org.example", name="Bea Boss")
    group = factories.group_with_seats(3, admin=admin)
    sleeper = factories.reader(email="zoe@org.example")
    membership = groups.claim_seat(session, group, sleeper, now=clock.now())
    groups.invite(
        session,
        group,
        admin,
        "ana@org.example",
        secret_keys=[TEST_SECRET],
        base_url="http://localhost",
        rules=rules,
        now=clock.now(),
    )
    reading = groups.claim_seat(session, group, factories.reader(), now=clock.now())
    with pytest.raises(groups.NoSeatsLeft):
        groups.claim_seat(session, group, factories.reader(email="cy@org.example"), now=clock.now())
    [subscription] = group.subscriptions
    subscription.status = SubscriptionStatus.PAST_DUE
    groups.mail_payment_problem(
        session, StripeGateway.from_config(dict(app.config)), subscription, None
    )
    groups.set_auto_reclaim(session, group, admin, True, now=clock.now())
    session.commit()
    clock.advance(days=rules.idle_days)
    reading.last_read_at = clock.now()
    assert groups.reclaim_idle_automatically(session, group.id, rules=rules, now=clock.now()) == 0
    session.commit()
    clock.advance(days=groups.IDLE_WARNING.days)
    assert groups.reclaim_idle_automatically(session, group.id, rules=rules, now=clock.now()) == 1
    session.commit()

    Worker(app).run_once()

    received = {(m["To"], m["Subject"]): m for m in collector.messages()}
    name = group.name
    assert set(received) == {
        ("ana@org.example", f"Bea Boss invites you to read with {name}"),
        ("boss@org.example", f"{name}: someone could not get a seat"),
        ("boss@org.example", f"{name}: a payment of €288.00 is failing"),
        (group.billing_email, f"{name}: a payment of €288.00 is failing"),
        ("zoe@org.example", f"Your seat in {name} will be freed on {_long(clock)}"),
        ("zoe@org.example", f"Your seat in {name} was freed"),
    }
    texts: dict[str, tuple[str, str]] = {}
    for (_, subject), message in received.items():
        texts[subject] = assert_branded_and_accessible(subject, message)
    text, html = texts[f"Bea Boss invites you to read with {name}"]
    [link] = re.findall(r"http://localhost/join/\S+", text)
    assert f'href="{escape(link)}"' in html and "Accept the invitation" in html
    assert f">{escape(link)}</a>" in html, "the invite link shown to copy, if need be"
    group_page = f"http://localhost/groups/{group.public_id}"
    for subject, button in (
        (f"{name}: someone could not get a seat", "Manage the seats"),
        (f"{name}: a payment of €288.00 is failing", "Your organisation"),
    ):
        text, html = texts[subject]
        assert group_page in text and f'href="{group_page}"' in html and button in html, subject
        assert f">{group_page}</a>" in html, f"{subject}: the address shown to copy"
    _, idle_html = texts[f"Your seat in {name} will be freed on {_long(clock)}"]
    assert 'href="https://meridian.example"' in idle_html and "Read The Daily Meridian" in idle_html
    _, freed_html = texts[f"Your seat in {name} was freed"]
    assert 'href="http://localhost/account"' in freed_html
    assert membership.removed_at is not None


def _long(clock: FixedClock) -> str:
    """The clock's date as the mails write it: ``31 January 2027``."""
    moment = clock.now()
    return f"{moment.day} {moment:%B %Y}"
