"""pytest plugin: a real SMTP server (aiosmtpd on localhost) for the tests that send mail.

Loaded by ``tests/conftest.py``. Fixture ``smtp_server`` (function): a running server on a free port
of 127.0.0.1 and the :class:`Collector` that keeps what it received, as ``(collector, port)``.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


class Collector:
    """An aiosmtpd handler that keeps every envelope it is given; ``stall`` seconds make it
    answer that late, with a temporary failure (a mail server in trouble)."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []
        self.stall = 0.0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Accept the message and keep it (or, while stalling, refuse it late)."""
        if self.stall:
            await asyncio.sleep(self.stall)
            return "451 Try again later"
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
