"""Mail through the outbox and a real SMTP server (aiosmtpd on localhost) that fails, is slow,
and recovers: requests only write the outbox, the worker sends each mail once."""

from __future__ import annotations

import re
import socket
import threading
from datetime import timedelta
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from flask import Flask
from jinja2 import ChoiceLoader, DictLoader
from sqlalchemy.orm import Session as DbSession

from billing import db
from billing.clock import FixedClock
from billing.models import MailStatus, Reader
from billing.services import mail
from billing.services.mail import SMTPBackend
from billing.worker import Tally, Worker
from tests import factories
from tests.conftest import Outbox, post_form
from tests.smtp_server import Collector, free_port


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


def work(app: Flask, name: str = "worker-1") -> Tally:
    """One worker pass over everything due now."""
    return Worker(app, name=name).run_once()


def test_a_password_reset_mail_reaches_the_smtp_server_with_a_working_link(
    app: Flask, smtp_server: tuple[Collector, int], outbox: Outbox, reader: Reader
) -> None:
    collector, _ = smtp_server
    client = app.test_client()

    response = post_form(client, "/password/reset", {"email": reader.email})

    assert response.status_code == 302
    assert collector.envelopes == [], "the request only writes the outbox"
    [queued] = outbox.all()
    assert (queued.status, queued.template) == (MailStatus.PENDING, "password_reset")
    assert work(app).mails == {"sent": 1}
    [envelope] = collector.envelopes
    assert envelope.mail_from == "billing@tollgate.test"
    assert envelope.rcpt_tos == ["reader@example.org"]
    [message] = collector.messages()
    assert message["Subject"] == "Choose a new password"
    assert message["To"] == "reader@example.org"
    plain = message.get_body(preferencelist=("plain",))
    assert plain is not None
    body = plain.get_content()
    match = re.search(r"http://localhost(/password/reset/\S+)", body)
    assert match, body
    assert client.get(match.group(1)).status_code == 200
    [sent] = outbox.all()
    assert (sent.status, sent.attempts, sent.sent_at) == (
        MailStatus.SENT,
        1,
        app.extensions["clock"].now(),
    )
    assert message["Message-ID"] == mail.message_id(sent, "billing@tollgate.test")
    assert not work(app), "sent once"


def test_a_reset_request_for_an_unknown_address_sends_nothing(
    app: Flask, smtp_server: tuple[Collector, int], outbox: Outbox
) -> None:
    collector, _ = smtp_server
    response = post_form(app.test_client(), "/password/reset", {"email": "nobody@example.org"})
    assert response.status_code == 302
    assert outbox.all() == []
    assert not work(app)
    assert collector.envelopes == []


def test_a_reset_request_never_talks_to_the_mail_server(
    app: Flask, outbox: Outbox, reader: Reader
) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        silent.setblocking(False)
        app.extensions["mail_backend"] = SMTPBackend(
            f"smtp://127.0.0.1:{silent.getsockname()[1]}", "Tollgate <billing@tollgate.test>"
        )
        for email in (reader.email, "nobody@example.org"):
            response = post_form(app.test_client(), "/password/reset", {"email": email})
            assert response.status_code == 302
            assert response.headers["Location"] == "/password/reset?sent=1"
        with pytest.raises(BlockingIOError):
            silent.accept()  # nobody connected: a slow mail server cannot show in the answer
    assert [m.to for m in outbox.all()] == [reader.email]


# --- the outbox ---------------------------------------------------------------------------------


def queue(app: Flask, count: int, *, key: str | None = None) -> None:
    """Write ``count`` mails to the outbox in one committed transaction."""
    with db.new_session() as own:
        for n in range(count):
            mail.send(
                own,
                f"reader{n}@example.org",
                "password_reset",
                key=key,
                name=f"Reader {n}",
                link=f"http://localhost/reset/{n}",
                valid_for="1 hour",
            )
        own.commit()


def received_by(collector: Collector) -> list[str]:
    """The recipients of every mail the server accepted, in order."""
    return [rcpt for envelope in collector.envelopes for rcpt in envelope.rcpt_tos]


def test_mail_written_in_a_transaction_that_rolls_back_is_never_sent(
    app: Flask, smtp_server: tuple[Collector, int], outbox: Outbox
) -> None:
    collector, _ = smtp_server
    with db.new_session() as own:
        mail.send(own, "x@example.org", "password_reset", name="X", link="l", valid_for="1 hour")
        own.rollback()
    assert outbox.all() == []
    assert not work(app)
    assert collector.envelopes == []


def test_the_same_key_sent_twice_is_one_mail(
    app: Flask, smtp_server: tuple[Collector, int], outbox: Outbox
) -> None:
    collector, _ = smtp_server
    queue(app, 1, key="reset:rdr_1:2026-11-25")
    queue(app, 1, key="reset:rdr_1:2026-11-25")
    assert len(outbox.all()) == 1
    work(app)
    queue(app, 1, key="reset:rdr_1:2026-11-25")
    work(app)
    assert received_by(collector) == ["reader0@example.org"]


def test_smtp_down_then_up_every_mail_is_sent_once_after_its_backoff(
    app: Flask, clock: FixedClock, outbox: Outbox
) -> None:
    port = free_port()
    app.extensions["mail_backend"] = SMTPBackend(
        f"smtp://127.0.0.1:{port}", "Tollgate <billing@tollgate.test>", timeout=2
    )
    queue(app, 3)
    assert work(app).mails == {"failed": 3}
    for message in outbox.all():
        assert (message.status, message.attempts) == (MailStatus.FAILED, 1)
        assert message.last_error is not None and "ConnectionRefusedError" in message.last_error
        assert message.next_attempt_at == clock.now() + timedelta(seconds=10)

    collector = Collector()
    controller = Controller(collector, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        assert not work(app), "not due before the backoff"
        clock.advance(seconds=10)
        assert work(app).mails == {"sent": 3}
        clock.advance(hours=2)
        assert not work(app)
    finally:
        controller.stop()
    assert sorted(received_by(collector)) == [f"reader{n}@example.org" for n in range(3)]
    assert {m.status for m in outbox.all()} == {MailStatus.SENT}


def test_a_mail_server_slower_than_the_timeout_is_given_up_on_and_retried(
    app: Flask, smtp_server: tuple[Collector, int], clock: FixedClock, outbox: Outbox
) -> None:
    collector, port = smtp_server
    app.extensions["mail_backend"] = SMTPBackend(
        f"smtp://127.0.0.1:{port}", "Tollgate <billing@tollgate.test>", timeout=0.5
    )
    queue(app, 1)
    collector.stall = 1.5
    assert work(app).mails == {"failed": 1}
    [message] = outbox.all()
    assert message.last_error is not None and "timed out" in message.last_error
    collector.stall = 0
    clock.advance(seconds=10)
    assert work(app).mails == {"sent": 1}
    assert received_by(collector) == ["reader0@example.org"]


def test_a_mail_failing_every_attempt_ends_dead_with_its_error(
    app: Flask, clock: FixedClock, outbox: Outbox, client: Any
) -> None:
    app.config["WORKER_MAX_ATTEMPTS"] = 2
    app.extensions["mail_backend"] = SMTPBackend(
        f"smtp://127.0.0.1:{free_port()}", "Tollgate <billing@tollgate.test>", timeout=2
    )
    queue(app, 1)
    assert work(app).mails == {"failed": 1}
    clock.advance(hours=1)
    assert work(app).mails == {"dead": 1}
    clock.advance(days=1)
    assert not work(app)
    [message] = outbox.all()
    assert (message.status, message.attempts) == (MailStatus.DEAD, 2)
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'tollgate_mail_outbox_backlog{status="dead"} 1.0' in metrics


def test_two_workers_sending_at_once_never_send_a_mail_twice(
    app: Flask, smtp_server: tuple[Collector, int], outbox: Outbox
) -> None:
    collector, _ = smtp_server
    queue(app, 60)
    start = threading.Barrier(2)
    tallies: list[Tally] = []

    def run(name: str) -> None:
        start.wait(timeout=10)
        tallies.append(Worker(app, name=name, batch=5).run_once())

    threads = [threading.Thread(target=run, args=(f"w{n}",)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(tallies) == 2 and sum(t.mails["sent"] for t in tallies) == 60
    assert sorted(received_by(collector)) == sorted(f"reader{n}@example.org" for n in range(60))


def test_a_template_with_an_html_part_is_sent_as_an_alternative_escaped(
    app: Flask, smtp_server: tuple[Collector, int]
) -> None:
    collector, _ = smtp_server
    app.jinja_loader = ChoiceLoader(
        [
            DictLoader(
                {
                    "mail/greeting.txt": "Subject: Hello {{ name }}\n\nHello {{ name }}.",
                    "mail/greeting.html": "<p>Hello <b>{{ name }}</b>.</p>",
                }
            ),
            app.jinja_loader,  # type: ignore[list-item]
        ]
    )
    with db.new_session() as own:
        rendered = mail.send(own, "h@example.org", "greeting", name="<Hal>")
        own.commit()
    assert rendered.html == "<p>Hello <b>&lt;Hal&gt;</b>.</p>"
    work(app)
    [message] = collector.messages()
    assert message["Subject"] == "Hello <Hal>"
    assert message.get_content_type() == "multipart/alternative"
    plain = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert plain is not None and plain.get_content().strip() == "Hello <Hal>."
    assert html is not None and "<b>&lt;Hal&gt;</b>" in html.get_content()


def test_a_template_without_an_html_part_is_plain_text(
    app: Flask, smtp_server: tuple[Collector, int]
) -> None:
    collector, _ = smtp_server
    app.jinja_loader = ChoiceLoader(
        [
            DictLoader({"mail/note.txt": "Subject: A note\n\nJust text."}),
            app.jinja_loader,  # type: ignore[list-item]
        ]
    )
    with db.new_session() as own:
        rendered = mail.send(own, "n@example.org", "note")
        own.commit()
    assert rendered.html is None
    work(app)
    [message] = collector.messages()
    assert message.get_content_type() == "text/plain"
