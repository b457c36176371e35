"""Outgoing mail: SMTP in production, the console and the dev outbox otherwise.

Callers use :func:`send` with a template name; the backend is chosen once from ``SMTP_URL``.
"""

from __future__ import annotations

import smtplib
import ssl
import sys
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from flask import Flask, current_app, render_template
from jinja2 import TemplateNotFound
from sqlalchemy.orm import Session

from billing.clock import current_clock
from billing.models import OutboxMessage


@dataclass(frozen=True)
class Mail:
    """A rendered mail: plain text, and its HTML alternative when the template has one."""

    to: str
    subject: str
    body: str
    html: str | None = None


class MailBackend(Protocol):
    """Delivers rendered mails."""

    def deliver(self, mail: Mail, session: Session) -> None:
        """Send ``mail``; raise on failure so the caller's transaction rolls back."""
        ...


class ConsoleBackend:
    """Prints mails and keeps them in the dev outbox table (``/dev/outbox``)."""

    def __init__(self, sender: str) -> None:
        self.sender = sender

    def deliver(self, mail: Mail, session: Session) -> None:
        """Print ``mail`` to stderr and store it in the outbox (within the caller's transaction)."""
        print(f"--- mail to {mail.to}: {mail.subject}\n{mail.body}\n---", file=sys.stderr)
        session.add(
            OutboxMessage(
                sent_at=current_clock().now(), to=mail.to, subject=mail.subject, body=mail.body
            )
        )


class SMTPBackend:
    """Sends through an SMTP server named by a URL: ``smtp://`` (STARTTLS if offered) or ``smtps://``."""

    def __init__(self, url: str, sender: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in {"smtp", "smtps"} or not parts.hostname:
            raise ValueError(f"SMTP_URL must look like smtp://user:pass@host:port, got {url!r}")
        self.ssl = parts.scheme == "smtps"
        self.host = parts.hostname
        self.port = parts.port or (465 if self.ssl else 587)
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.sender = sender

    def deliver(self, mail: Mail, session: Session) -> None:
        """Send ``mail`` over SMTP, upgrading to TLS whenever the server offers it."""
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = mail.to
        message["Subject"] = mail.subject
        message["Message-ID"] = make_msgid(domain="tollgate")
        message.set_content(mail.body)
        if mail.html is not None:
            message.add_alternative(mail.html, subtype="html")
        context = ssl.create_default_context()
        smtp_cls: Any = smtplib.SMTP_SSL if self.ssl else smtplib.SMTP
        kwargs: dict[str, Any] = {"context": context} if self.ssl else {}
        with smtp_cls(self.host, self.port, timeout=10, **kwargs) as smtp:
            if not self.ssl:
                smtp.ehlo()
                if smtp.has_extn("starttls"):
                    smtp.starttls(context=context)
                    smtp.ehlo()
            if self.username:
                smtp.login(self.username, self.password or "")
            smtp.send_message(message)


def init_app(app: Flask) -> None:
    """Choose the mail backend from ``SMTP_URL`` (unless the config already provides one)."""
    backend = app.config.get("MAIL_BACKEND")
    if backend is None:
        url = app.config.get("SMTP_URL")
        sender = app.config["MAIL_FROM"]
        backend = SMTPBackend(url, sender) if url else ConsoleBackend(sender)
    app.extensions["mail_backend"] = backend


def send(
    session: Session, to: str, template: str, *, key: str | None = None, **context: Any
) -> Mail:
    """Render ``mail/<template>.txt`` (first line ``Subject: ...``) and, when it exists,
    ``mail/<template>.html`` with the same context, and deliver them to ``to``.

    ``key`` names the event the mail is about (the outbox sends one mail per key).
    """
    text = render_template(f"mail/{template}.txt", **context)
    first, _, body = text.partition("\n")
    if not first.startswith("Subject: "):
        raise ValueError(f"mail/{template}.txt must start with a 'Subject: ' line")
    subject = first.removeprefix("Subject: ").strip()
    try:
        html: str | None = render_template(f"mail/{template}.html", subject=subject, **context)
    except TemplateNotFound:
        html = None
    mail = Mail(to=to, subject=subject, body=body.lstrip("\n"), html=html)
    current_app.extensions["mail_backend"].deliver(mail, session)
    return mail
