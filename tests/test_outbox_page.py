"""The development outbox page shows every mail of the outbox and where it is in its delivery."""

from __future__ import annotations

import re

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from billing import db
from billing.clock import FixedClock
from billing.models import OutboxMessage
from billing.services import mail
from billing.services.mail import Mail
from billing.worker import Worker


class FlakyBackend:
    """Refuses mails to one address, "sends" the others."""

    sender = "Tollgate <billing@tollgate.test>"

    def __init__(self) -> None:
        self.sent: list[str] = []

    def deliver(self, message: Mail, *, message_id: str) -> None:
        """Send, or refuse the address that bounces."""
        if message.to == "bounce@example.org":
            raise ConnectionRefusedError("the mail server said no")
        self.sent.append(message.to)


def test_the_dev_outbox_shows_each_mails_state_attempts_and_error(
    app: Flask, client: FlaskClient, clock: FixedClock
) -> None:
    backend = FlakyBackend()
    app.extensions["mail_backend"] = backend
    with db.new_session() as own:
        for to in ("sent@example.org", "bounce@example.org"):
            mail.send(own, to, "password_reset", name="R", link="http://l/x", valid_for="1 hour")
        own.commit()
    Worker(app).run_once()
    with db.new_session() as own:
        mail.send(
            own, "later@example.org", "password_reset", name="L", link="l", valid_for="1 hour"
        )
        own.commit()

    page = client.get("/dev/outbox").get_data(as_text=True)

    assert backend.sent == ["sent@example.org"]
    text = " ".join(re.sub(r"<[^>]+>", " ", page).split())
    assert "To later@example.org · written 2026-11-25 09:00 UTC · pending" in text
    assert "To sent@example.org · written 2026-11-25 09:00 UTC · sent 2026-11-25 09:00 UTC" in text
    assert (
        "To bounce@example.org · written 2026-11-25 09:00 UTC · failed · 1 attempt · "
        "next try 09:00:10 UTC Last error: ConnectionRefusedError: the mail server said no"
    ) in text


def test_the_dev_outbox_shows_each_mails_html_part_as_its_own_sandboxed_page(
    app: Flask, client: FlaskClient
) -> None:
    with db.new_session() as own:
        mail.send(
            own, "r@example.org", "password_reset", name="R", link="http://l/x", valid_for="1 hour"
        )
        own.commit()
        [message] = own.scalars(select(OutboxMessage)).all()

    page = client.get("/dev/outbox").get_data(as_text=True)
    html = client.get(f"/dev/outbox/{message.id}.html")

    assert f'href="/dev/outbox/{message.id}.html"' in page
    assert html.status_code == 200 and html.mimetype == "text/html"
    assert html.get_data(as_text=True) == message.html and "http://l/x" in message.html
    policy = html.headers["Content-Security-Policy"]
    assert policy.startswith("sandbox;") and "script-src" not in policy
    assert "default-src 'none'" in policy
    assert client.get(f"/dev/outbox/{message.id + 1}.html").status_code == 404
