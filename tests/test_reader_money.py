"""The reader's money, told truthfully: a mail for every money event (through a real SMTP server),
invoices with numbers and PDFs from the Stripe stand-in, the switch preview and the credit a
switch to a cheaper plan leaves, against a real localstripe."""

from __future__ import annotations

import re
import urllib.request
from datetime import datetime, timedelta
from email.message import EmailMessage
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.clock import FixedClock
from billing.devstripe_billing import card_problem, luhn_ok, pdf_document
from billing.devstripe_prorations import share_left
from billing.gateway import GatewayError, StripeGateway
from billing.models import Customer, Invoice, InvoiceStatus, Plan, Reader
from billing.services import notices, payments
from billing.worker import Worker
from tests.helpers import login
from tests.payments_support import (
    GERMAN_CARD,
    MASTERCARD,
    forget_the_mirror,
    only_subscription,
    reader_with_card,
    save_card,
)
from tests.smtp_server import Collector
from tests.stripe_server import LocalstripeServer

pytestmark = [pytest.mark.usefixtures("stripe"), pytest.mark.wall_clock]

MONTHLY, YEARLY = "individual-monthly", "individual-yearly"
INVOICE_NUMBER = re.compile(r"\b[0-9A-F]{8}-\d{4}\b")


@pytest.fixture
def app_config(app_config: dict[str, Any], branded_mail: dict[str, Any]) -> dict[str, Any]:
    """Mail goes to the local SMTP server, under the demo newspaper's brand."""
    return {**app_config, **branded_mail}


@pytest.fixture
def reader(
    plans: dict[str, Plan],
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    clock: FixedClock,
) -> Reader:
    """A verified reader with a Visa card saved, no trial, no subscription."""
    return reader_with_card(
        session, gateway, stripe, clock.now(), email="anna@example.org", name="Anna"
    )


def parts(message: EmailMessage) -> tuple[str, str]:
    """The plain-text and HTML parts of a multipart/alternative mail."""
    assert message.get_content_type() == "multipart/alternative", message.get_content_type()
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    return str(text.get_content()), str(html.get_content())


def fetch(url: str) -> tuple[str, bytes]:
    """GET ``url`` (the stand-in's invoice pages need no key): its content type and body."""
    with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 - our own test server
        return answer.headers.get_content_type(), answer.read()


def test_every_money_event_mails_the_reader_once_in_the_publications_brand(
    app: Flask,
    reader: Reader,
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    clock: FixedClock,
    smtp_server: tuple[Collector, int],
) -> None:
    collector, _ = smtp_server
    now = clock.now()
    payments.subscribe(session, gateway, reader, MONTHLY, now=now)
    session.commit()
    payments.switch_plan(session, gateway, reader, YEARLY, now=now)
    session.commit()
    renewal = only_subscription(session).current_period_end
    assert notices.due_renewal_notices(session, now=renewal - timedelta(days=8)) == []
    [due] = notices.due_renewal_notices(session, now=renewal - timedelta(days=6))
    assert notices.send_renewal_notice(session, due) is True
    assert notices.send_renewal_notice(session, due) is False, "one notice per renewal"
    session.commit()
    assert notices.due_renewal_notices(session, now=renewal - timedelta(days=5)) == []
    payments.switch_plan(session, gateway, reader, MONTHLY, now=now)
    session.commit()
    save_card(session, gateway, stripe, reader, now, MASTERCARD)
    payments.cancel_at_period_end(session, gateway, reader, now=now)
    session.commit()
    payments.resume(session, gateway, reader, now=now)
    session.commit()
    notices.password_changed(session, reader, now=now)
    notices.email_changed(session, reader, old_email="old.anna@example.org", now=now)
    session.commit()
    Worker(app).run_once()
    Worker(app).run_once()  # a second pass sends nothing again

    messages = collector.messages()
    subjects = [m["Subject"] for m in messages]
    numbers = sorted(
        n for n in session.scalars(select(Invoice.number).where(Invoice.amount_paid > 0)) if n
    )
    assert len(numbers) == 2 and all(INVOICE_NUMBER.fullmatch(n) for n in numbers), numbers
    assert sorted(subjects) == sorted(
        [
            "Welcome to The Daily Meridian: your monthly subscription",
            f"Your receipt {numbers[0]} from The Daily Meridian",
            "Your plan is now yearly",
            f"Your receipt {numbers[1]} from The Daily Meridian",
            f"Your yearly subscription renews on {renewal.day} {renewal:%B %Y}",
            "Your plan is now monthly",
            "Your card is updated",
            "Your subscription is cancelled",
            "Your subscription continues",
            "Your password was changed",
            "Your e-mail address was changed",
        ]
    ), "each money event mailed exactly once, and nothing else"
    for message in messages:
        text, html = parts(message)
        assert message["From"] == "The Daily Meridian <billing@meridian.example>"
        assert "The Daily Meridian" in text and "help@meridian.example" in text
        assert "https://meridian.example/terms" in html and "#8a1c1c" in html
        assert "unsubscribe" not in (text + html).lower(), "transactional: no unsubscribe link"
    by_subject = {m["Subject"]: m for m in messages}
    assert by_subject["Your e-mail address was changed"]["To"] == "old.anna@example.org"

    receipt_text, receipt_html = parts(
        by_subject[f"Your receipt {numbers[1]} from The Daily Meridian"]
    )
    assert "Amount paid: €108.00" in receipt_text
    assert "VAT included: €0.00" in receipt_text
    pdf_url = re.search(r"PDF: (\S+)", receipt_text)
    assert pdf_url is not None and pdf_url.group(1) in receipt_html
    kind, body = fetch(pdf_url.group(1))
    assert kind == "application/pdf" and body.startswith(b"%PDF-1.4")
    assert f"Invoice {numbers[1]}".encode() in body
    page_url = re.search(r"Your invoice: (\S+)", receipt_text)
    assert page_url is not None
    kind, page = fetch(page_url.group(1))
    assert kind == "text/html" and numbers[1].encode() in page

    switched_back, _ = parts(by_subject["Your plan is now monthly"])
    assert "Charged now: €0.00" in switched_back
    assert "Credit on your account: €108.00" in switched_back
    card, _ = parts(by_subject["Your card is updated"])
    assert "Mastercard ending in 4444" in card or "ending in 4444" in card


def test_the_switch_preview_names_the_charge_stripe_then_makes_and_the_credit_it_leaves(
    reader: Reader, session: Session, gateway: StripeGateway, clock: FixedClock
) -> None:
    now = clock.now()
    payments.subscribe(session, gateway, reader, MONTHLY, now=now)
    session.commit()

    to_yearly = payments.preview_switch(session, gateway, reader, YEARLY, now=now)
    assert (to_yearly.charged_now, to_yearly.credit_after) == (10800, 0)
    assert to_yearly.next_amount == 12000
    assert to_yearly.next_charge_at == payments.add_interval(now, payments.BillingInterval.YEAR)
    payments.switch_plan(session, gateway, reader, YEARLY, now=now)
    session.commit()
    charged = session.scalars(
        select(Invoice.amount_paid).order_by(Invoice.created_at.desc(), Invoice.id.desc())
    ).first()
    assert charged == to_yearly.charged_now, "the page said what Stripe then charged"

    back = payments.preview_switch(session, gateway, reader, MONTHLY, now=now)
    assert (back.charged_now, back.credit_after, back.next_amount) == (0, 10800, 0)
    payments.switch_plan(session, gateway, reader, MONTHLY, now=now)
    session.commit()

    customer = session.scalars(select(Customer)).one()
    assert (customer.balance, customer.credit) == (-10800, 10800)
    assert gateway.retrieve_customer(customer.stripe_id).balance == -10800
    overview = payments.overview(session, reader, now=now)
    assert (overview.credit, overview.next_amount) == (10800, 0), "the credit pays the next charge"
    assert session.scalars(select(Invoice.status)).all().count(InvoiceStatus.PAID) == 3


def test_a_switch_back_to_monthly_with_vat_inside_leaves_the_credit_the_preview_showed(
    plans: dict[str, Plan],
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    clock: FixedClock,
) -> None:
    now = clock.now()
    german = reader_with_card(
        session, gateway, stripe, now, number=GERMAN_CARD, email="jonas@example.org", country="DE"
    )
    payments.subscribe(session, gateway, german, MONTHLY, now=now)
    payments.switch_plan(session, gateway, german, YEARLY, now=now)
    session.commit()

    back = payments.preview_switch(session, gateway, german, MONTHLY, now=now)
    assert (back.charged_now, back.credit_after) == (0, 10800), "the VAT is inside the credit"
    payments.switch_plan(session, gateway, german, MONTHLY, now=now)
    session.commit()

    customer = session.scalars(select(Customer)).one()
    assert gateway.retrieve_customer(customer.stripe_id).balance == -10800
    assert customer.credit == back.credit_after
    credit_note = session.scalars(select(Invoice).order_by(Invoice.id.desc())).first()
    assert credit_note is not None and credit_note.tax < 0, "a credit gives back the VAT in it"
    assert credit_note.total == -back.credit_after, "Stripe's total of a credit is negative"
    assert (credit_note.amount_paid, credit_note.status) == (0, InvoiceStatus.PAID)
    assert credit_note.total - credit_note.tax < 0, "its net is a credit too"
    assert only_subscription(session).plan.code == MONTHLY


def test_a_switch_charges_what_its_preview_showed_though_the_clock_moved_before_the_click(
    reader: Reader, session: Session, gateway: StripeGateway, clock: FixedClock
) -> None:
    payments.subscribe(session, gateway, reader, MONTHLY, now=clock.now())
    session.commit()
    subscription = only_subscription(session)
    start, end = (
        int(subscription.current_period_start.timestamp()),
        int(subscription.current_period_end.timestamp()),
    )
    wait = timedelta(minutes=20)

    def credit(at: datetime) -> int:
        return share_left(1200, start, end, int(at.timestamp()))

    # Ten days into the month, at a moment whose unused time is worth a cent less 20 minutes on.
    base = clock.now() + timedelta(days=10)
    shown_at = next(
        moment
        for moment in (base + timedelta(minutes=m) for m in range(60))
        if credit(moment) != credit(moment + wait)
    )
    clock.set(shown_at)
    shown = payments.preview_switch(session, gateway, reader, YEARLY, now=clock.now())
    assert shown.proration_date == shown_at.replace(microsecond=0)
    assert shown.charged_now == 12000 - credit(shown_at), "the month's unused days are credited"
    assert 10800 < shown.charged_now < 12000
    clock.advance(wait)
    assert payments.preview_switch(
        session, gateway, reader, YEARLY, now=clock.now()
    ).charged_now != (shown.charged_now), (
        "by the time of the click, the same switch is priced differently"
    )

    payments.switch_plan(
        session, gateway, reader, YEARLY, now=clock.now(), proration_date=shown.proration_date
    )
    session.commit()

    latest = gateway.retrieve_subscription(subscription.stripe_id).latest_invoice_id
    assert latest is not None
    charged = gateway.retrieve_invoice(latest)
    assert (charged.amount_paid, charged.status) == (shown.charged_now, "paid")
    assert only_subscription(session).plan.code == YEARLY


@pytest.mark.parametrize(
    ("shown_before", "message"),
    [
        (timedelta(minutes=31), "out of date"),
        (timedelta(days=40), "out of date"),
        (-timedelta(minutes=1), "in the future"),
    ],
)
def test_a_switch_confirmed_from_a_stale_or_future_preview_is_refused_and_changes_nothing(
    reader: Reader,
    session: Session,
    gateway: StripeGateway,
    clock: FixedClock,
    shown_before: timedelta,
    message: str,
) -> None:
    payments.subscribe(session, gateway, reader, MONTHLY, now=clock.now())
    session.commit()
    clock.advance(timedelta(days=1))

    with pytest.raises(payments.PreviewExpired) as refused:
        payments.switch_plan(
            session,
            gateway,
            reader,
            YEARLY,
            now=clock.now(),
            proration_date=clock.now() - shown_before,
        )

    assert refused.value.field == "proration_date" and message in refused.value.message
    assert refused.value.status == 409
    stripe_subscription = gateway.retrieve_subscription(only_subscription(session).stripe_id)
    assert stripe_subscription.price_id == only_subscription(session).plan.stripe_price_id
    assert only_subscription(session).plan.code == MONTHLY


def _switch_back_to_monthly(
    session: Session, gateway: StripeGateway, reader: Reader, now: datetime
) -> None:
    """Subscribe monthly, switch to yearly, then back: the year's unused part, less the month,
    is left as a credit (a credit invoice of -108.00)."""
    payments.subscribe(session, gateway, reader, MONTHLY, now=now)
    payments.switch_plan(session, gateway, reader, YEARLY, now=now)
    payments.switch_plan(session, gateway, reader, MONTHLY, now=now)
    session.commit()


def test_the_next_invoice_uses_the_credit_first_and_keeps_the_rest(
    reader: Reader, session: Session, gateway: StripeGateway, clock: FixedClock
) -> None:
    now = clock.now()
    _switch_back_to_monthly(session, gateway, reader, now)
    subscription = only_subscription(session)
    customer_id = subscription.customer.stripe_id

    payments.cancel_now(session, gateway, reader, now=now)
    session.commit()
    again = payments.subscribe(session, gateway, reader, MONTHLY, now=now)
    session.commit()

    assert again.subscription is not None
    newest = gateway.list_invoices(subscription_id=again.subscription.stripe_id)[0]
    assert (newest.amount_due, newest.status) == (0, "paid"), "paid from the credit"
    assert newest.total == 1200, "the total is the invoice's, before the credit pays it"
    assert gateway.retrieve_customer(customer_id).balance == -(10800 - 1200)


def test_invoice_numbers_count_up_per_customer_from_its_prefix(
    plans: dict[str, Plan],
    session: Session,
    gateway: StripeGateway,
    stripe: LocalstripeServer,
    clock: FixedClock,
) -> None:
    readers = [
        reader_with_card(session, gateway, stripe, clock.now(), email=f"r{i}@example.org")
        for i in range(2)
    ]
    for someone in readers:
        payments.subscribe(session, gateway, someone, MONTHLY, now=clock.now())
        payments.switch_plan(session, gateway, someone, YEARLY, now=clock.now())
    session.commit()

    for someone in readers:
        customer = session.scalars(select(Customer).where(Customer.reader_id == someone.id)).one()
        found = sorted(
            i.number or "" for i in gateway.list_invoices(customer_id=customer.stripe_id)
        )
        prefix = found[0].split("-")[0]
        assert found == [f"{prefix}-0001", f"{prefix}-0002"]


def test_the_card_form_takes_the_number_with_spaces_as_stripe_does(
    stripe: LocalstripeServer,
) -> None:
    method = stripe.create_card("4242 4242 4242 4242")
    assert stripe.request("GET", f"/v1/payment_methods/{method}")["card"]["last4"] == "4242"


@pytest.mark.parametrize(
    ("number", "message"),
    [
        ("4242 4242 4242", "Your card number is incomplete."),
        ("4242 4242 4242 4241", "Your card number is invalid."),
        ("4242-4242-4242-424x", "Your card number is invalid."),
    ],
)
def test_a_wrong_card_number_is_refused_with_stripes_words(
    stripe: LocalstripeServer, number: str, message: str
) -> None:
    with pytest.raises(Exception, match=re.escape(message)):
        stripe.create_card(number)


def test_card_checks_name_what_is_wrong() -> None:
    good = {"number": "4000 0000 0000 0341", "exp_month": "12", "exp_year": "34", "cvc": "123"}
    assert card_problem(good) is None and good["number"] == "4000000000000341"
    assert card_problem({**good, "exp_month": "13"}) == (
        "invalid_expiry_month",
        "Your card's expiration month is invalid.",
    )
    assert card_problem({**good, "cvc": "12"}) == (
        "incomplete_cvc",
        "Your card's security code is incomplete.",
    )
    assert luhn_ok("4242424242424242") and not luhn_ok("4242424242424241")


def test_a_pdf_document_is_a_well_formed_pdf_with_the_lines_in_it() -> None:
    document = pdf_document(["Invoice ABC-0001", "Total (EUR): 12.00"])
    assert document.startswith(b"%PDF-1.4") and document.rstrip().endswith(b"%%EOF")
    assert b"(Invoice ABC-0001) Tj" in document and b"Total \\(EUR\\): 12.00" in document
    xref = int(document.rsplit(b"startxref\n", 1)[1].split(b"\n", 1)[0])
    assert document[xref:].startswith(b"xref")


def test_a_gateway_error_for_an_unknown_subscription_is_a_gateway_error(
    plans: dict[str, Plan], gateway: StripeGateway
) -> None:
    with pytest.raises(GatewayError):
        gateway.preview_price_change("sub_doesnotexist", plans[YEARLY].stripe_price_id or "")


def test_reconciling_old_invoices_into_an_empty_mirror_mails_no_receipts(
    app: Flask,
    reader: Reader,
    session: Session,
    gateway: StripeGateway,
    clock: FixedClock,
    smtp_server: tuple[Collector, int],
) -> None:
    collector, _ = smtp_server
    payments.subscribe(session, gateway, reader, MONTHLY, now=clock.now())
    session.commit()
    Worker(app).run_once()
    receipts = [m for m in collector.messages() if m["Subject"].startswith("Your receipt")]
    assert len(receipts) == 1
    forget_the_mirror(session)
    clock.advance(timedelta(days=4))

    result = app.test_cli_runner().invoke(args=["billing", "reconcile"])

    assert result.exit_code == 0, result.output
    assert session.scalars(select(Invoice)).one().status == InvoiceStatus.PAID
    Worker(app).run_once()
    receipts = [m for m in collector.messages() if m["Subject"].startswith("Your receipt")]
    assert len(receipts) == 1, "an old payment seen again is not receipted again"


def test_the_invoices_page_shows_a_credit_invoice_as_a_credit(
    app: Flask, reader: Reader, session: Session, gateway: StripeGateway, clock: FixedClock
) -> None:
    now = clock.now()
    _switch_back_to_monthly(session, gateway, reader, now)
    client = app.test_client()
    login(client, reader)

    page = client.get("/account/invoices").get_data(as_text=True)

    amounts = [
        re.sub(r"<[^>]+>", "", a).strip() for a in re.findall(r"data-amount>(.*?)</td>", page)
    ]
    assert amounts[0] == "-€108.00 (credit)", "the newest: the unused year, less the month"
    assert "(credit)" not in " ".join(amounts[1:])
