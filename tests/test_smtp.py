"""Mail through a real SMTP server: the app talks SMTP to an aiosmtpd server on localhost."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from flask import Flask
from sqlalchemy.orm import Session as DbSession

from billing.models import Reader
from tests import factories
from tests.conftest import Outbox, post_form


class Collector:
    """An aiosmtpd handler that keeps every envelope it is given."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Accept the message and keep it."""
        self.envelopes.append(envelope)
        return "250 Message accepted for delivery"

    def messages(self) -> list[EmailMessage]:
        """The received messages, parsed."""
        return [
            message_from_bytes(e.original_content or b"", policy=policy.default)
            for e in self.envelopes
        ]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def smtp_server() -> Iterator[tuple[Collector, int]]:
    """A running SMTP server on localhost and what it received."""
    collector = Collector()
    port = free_port()
    controller = Controller(collector, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield collector, port
    finally:
        controller.stop()


@pytest.fixture
def app_config(app_config: dict[str, Any], smtp_server: tuple[Collector, int]) -> dict[str, Any]:
    """The test settings, with mail sent to the local SMTP server."""
    _, port = smtp_server
    return {
        **app_config,
        "SMTP_URL": f"smtp://127.0.0.1:{port}",
        "MAIL_FROM": "Tollgate <billing@tollgate.test>",
    }


@pytest.fixture
def reader(session: DbSession) -> Reader:
    """A verified reader, committed."""
    created = factories.reader(email="reader@example.org", name="Rita Reader")
    session.commit()
    return created


def test_a_password_reset_mail_reaches_the_smtp_server_with_a_working_link(
    app: Flask, smtp_server: tuple[Collector, int], outbox: Outbox, reader: Reader
) -> None:
    collector, _ = smtp_server
    client = app.test_client()

    response = post_form(client, "/password/reset", {"email": reader.email})

    assert response.status_code == 302
    [envelope] = collector.envelopes
    assert envelope.mail_from == "billing@tollgate.test"
    assert envelope.rcpt_tos == ["reader@example.org"]
    [message] = collector.messages()
    assert message["Subject"] == "Choose a new password"
    assert message["To"] == "reader@example.org"
    body = message.get_content()
    match = re.search(r"http://localhost(/password/reset/\S+)", body)
    assert match, body
    assert client.get(match.group(1)).status_code == 200
    assert outbox.all() == [], "the console outbox is not used once SMTP is configured"


def test_a_reset_request_for_an_unknown_address_sends_nothing(
    app: Flask, smtp_server: tuple[Collector, int]
) -> None:
    collector, _ = smtp_server
    response = post_form(app.test_client(), "/password/reset", {"email": "nobody@example.org"})
    assert response.status_code == 302
    assert collector.envelopes == []
