"""Outgoing mail through a transactional outbox: SMTP in production, the console otherwise.

:func:`send` never talks to a mail server: it renders the mail and writes it to the outbox
(:class:`~billing.models.OutboxMessage`) in the caller's transaction, so a mail goes out if and
only if the change that causes it is committed. The worker (:mod:`billing.worker`) delivers
pending mails after commit with :func:`deliver_claimed`, retried with backoff, each once: a key
per mail makes a second ``send`` of the same mail a no-op, and a claim makes sure no two workers
send one mail. The backend is chosen once from ``SMTP_URL``.

Exactly once holds up to the mail server: when a worker dies between the server accepting a mail
and recording it sent, the mail is sent again after the lease; it carries the same
``Message-ID`` (derived from its key), by which receivers recognise the repeat.
"""

from __future__ import annotations

import hashlib
import smtplib
import ssl
import sys
import uuid
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.utils import parseaddr
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from flask import Flask, current_app, render_template
from jinja2 import TemplateNotFound
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from billing import leases
from billing.clock import current_clock
from billing.models import MailStatus, OutboxMessage

READY = (MailStatus.PENDING, MailStatus.FAILED)
DONE = (MailStatus.SENT,)


@dataclass(frozen=True)
class Mail:
    """A rendered mail: plain text, and an HTML alternative when the template has one."""

    to: str
    subject: str
    body: str
    html: str | None = None


class MailBackend(Protocol):
    """Delivers rendered mails."""

    def deliver(self, mail: Mail, *, message_id: str) -> None:
        """Send ``mail`` with this ``Message-ID``; raise on failure (the worker retries)."""
        ...


class ConsoleBackend:
    """Prints mails (development: the dev outbox page shows them too)."""

    def __init__(self, sender: str) -> None:
        self.sender = sender

    def deliver(self, mail: Mail, *, message_id: str) -> None:
        """Print ``mail`` to stderr."""
        print(f"--- mail to {mail.to}: {mail.subject}\n{mail.body}\n---", file=sys.stderr)


class SMTPBackend:
    """Sends through an SMTP server named by a URL: ``smtp://`` (STARTTLS if offered) or ``smtps://``."""

    def __init__(self, url: str, sender: str, *, timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in {"smtp", "smtps"} or not parts.hostname:
            raise ValueError(f"SMTP_URL must look like smtp://user:pass@host:port, got {url!r}")
        self.ssl = parts.scheme == "smtps"
        self.host = parts.hostname
        self.port = parts.port or (465 if self.ssl else 587)
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.sender = sender
        self.timeout = timeout

    def deliver(self, mail: Mail, *, message_id: str) -> None:
        """Send ``mail`` over SMTP, upgrading to TLS whenever the server offers it; connecting and
        every answer of the server wait at most ``timeout`` seconds."""
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = mail.to
        message["Subject"] = mail.subject
        message["Message-ID"] = message_id
        message.set_content(mail.body)
        if mail.html is not None:
            message.add_alternative(mail.html, subtype="html")
        context = ssl.create_default_context()
        smtp_cls: Any = smtplib.SMTP_SSL if self.ssl else smtplib.SMTP
        kwargs: dict[str, Any] = {"context": context} if self.ssl else {}
        with smtp_cls(self.host, self.port, timeout=self.timeout, **kwargs) as smtp:
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
        timeout = float(app.config.get("SMTP_TIMEOUT", 10))
        backend = SMTPBackend(url, sender, timeout=timeout) if url else ConsoleBackend(sender)
    app.extensions["mail_backend"] = backend


def render(to: str, template: str, **context: Any) -> Mail:
    """Render ``mail/<template>.txt`` (first line ``Subject: ...``) and, when it exists,
    ``mail/<template>.html`` with the same context."""
    text = render_template(f"mail/{template}.txt", **context)
    first, _, body = text.partition("\n")
    if not first.startswith("Subject: "):
        raise ValueError(f"mail/{template}.txt must start with a 'Subject: ' line")
    subject = first.removeprefix("Subject: ").strip()
    try:
        html: str | None = render_template(f"mail/{template}.html", subject=subject, **context)
    except TemplateNotFound:
        html = None
    return Mail(to=to, subject=subject, body=body.lstrip("\n"), html=html)


def send(
    session: Session, to: str, template: str, *, key: str | None = None, **context: Any
) -> Mail:
    """Render the mail ``template`` for ``to`` and put it in the outbox, in the caller's
    transaction; the worker sends it once that transaction commits.

    ``key`` names the mail for exactly-once: while a mail with that key exists, sending it again
    writes nothing (a retried job, a redelivered event, a second worker). Without a key, every
    call is a mail of its own.
    """
    mail = render(to, template, **context)
    values = {
        "key": key or f"{template}:{uuid.uuid4().hex}",
        "template": template,
        "created_at": current_clock().now(),
        "to": mail.to,
        "subject": mail.subject,
        "body": mail.body,
        "html": mail.html,
        "status": MailStatus.PENDING,
        "attempts": 0,
    }
    # A mail with this key already written (even by a concurrent transaction) goes out once.
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    session.execute(
        insert(OutboxMessage).values(**values).on_conflict_do_nothing(index_elements=["key"])
    )
    return mail


def message_id(row: OutboxMessage, sender: str) -> str:
    """The mail's ``Message-ID``: the same for every attempt, so a repeat is recognisable."""
    domain = parseaddr(sender)[1].rpartition("@")[2] or "tollgate"
    digest = hashlib.sha256(row.key.encode()).hexdigest()[:32]
    return f"<{digest}@{domain}>"


def claim_due(
    session: Session, *, now: datetime, worker: str, policy: leases.RetryPolicy, limit: int
) -> list[int]:
    """Claim up to ``limit`` due mails for ``worker`` (the caller commits); their row ids."""
    return leases.claim_due(
        session, OutboxMessage, READY, now=now, worker=worker, lease=policy.lease, limit=limit
    )


def deliver_claimed(
    session: Session, mail_id: int, backend: MailBackend, *, worker: str, policy: leases.RetryPolicy
) -> MailStatus | None:
    """Send the mail ``worker`` claimed and record the outcome; ``None`` if it was no longer
    ``worker``'s to send. Commits."""
    now = current_clock().now()
    row: OutboxMessage | None = leases.hold(session, OutboxMessage, mail_id, worker, DONE)
    if row is None:
        session.rollback()
        return None
    mail = Mail(to=row.to, subject=row.subject, body=row.body, html=row.html)
    sender = str(getattr(backend, "sender", "") or current_app.config["MAIL_FROM"])
    try:
        backend.deliver(mail, message_id=message_id(row, sender))
    except Exception as exc:
        session.rollback()
        retry_at = policy.retry_at(leases.attempts_of(session, OutboxMessage, mail_id), now)
        status = MailStatus.FAILED if retry_at else MailStatus.DEAD
        error = f"{type(exc).__name__}: {exc}"[:4000]
        recorded = leases.release(
            session,
            OutboxMessage,
            mail_id,
            worker,
            DONE,
            status=status,
            last_error=error,
            next_attempt_at=retry_at,
        )
        session.commit()
        return status if recorded else None
    leases.release(
        session,
        OutboxMessage,
        mail_id,
        worker,
        DONE,
        status=MailStatus.SENT,
        sent_at=now,
        last_error=None,
        next_attempt_at=None,
    )
    session.commit()
    return MailStatus.SENT
