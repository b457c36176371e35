"""A mail for every money event: welcome, receipts, switches, cancellation, resumption, card and
account changes, and the yearly renewal notice.

Every mail goes through :func:`billing.services.mail.send` with a ``key`` naming its event, so the
outbox sends it once however often the event is seen. Each has a plain-text and an HTML template
(``mail/<name>.txt``, ``mail/<name>.html``) in the publication's brand. None carries an
unsubscribe link: they are transactional messages about the reader's contract and payments
(receipts, changes, the renewal notice consumer law asks for), which a reader cannot opt out of.

Functions take the session and what happened, and never commit.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import select
from sqlalchemy.orm import Session

from billing.models import (
    BillingInterval,
    Customer,
    Invoice,
    InvoiceStatus,
    Plan,
    Reader,
    Subscription,
    SubscriptionStatus,
)
from billing.services import mail

RECEIPT_WINDOW = timedelta(days=3)
"""How recent a payment must be for the mirror's first sight of it to send a receipt."""
RENEWAL_NOTICE_DAYS = 7
"""How long before a yearly renewal the reader is told (several EU countries ask for notice)."""


def _links() -> dict[str, str]:
    base = current_app.config["PUBLIC_BASE_URL"]
    return {
        "account_url": f"{base}/account",
        "invoices_url": f"{base}/account/invoices",
        "cancel_url": f"{base}/account/subscription/cancel",
        "card_url": f"{base}/account/card",
        "reset_url": f"{base}/password/reset",
    }


def _recipient(customer: Customer) -> tuple[str, str | None]:
    reader = customer.reader
    if reader is not None:
        return reader.email, reader.name
    return customer.email, None


def _send(session: Session, to: str, template: str, key: str, **context: Any) -> None:
    mail.send(session, to, template, key=key, **context, **_links())


def welcome(
    session: Session,
    reader: Reader,
    plan: Plan,
    *,
    first_charge_at: datetime,
    charged_now: bool,
    key: str,
) -> None:
    """Welcome a new subscriber: the plan, its price, and when the card is (or was) charged."""
    _send(
        session,
        reader.email,
        "welcome",
        key=f"welcome:{key}",
        name=reader.name,
        plan=plan,
        first_charge_at=first_charge_at,
        charged_now=charged_now,
    )


def after_first_payment(
    session: Session, subscription: Subscription, *, scheduled: bool, now: datetime
) -> None:
    """Welcome the reader whose first payment went through after they subscribed (confirmed
    with 3-D Secure, or paid with another card after a decline), as the mirror sees the
    subscription leave ``incomplete``.

    Under the key :func:`billing.services.payments.subscribe` uses for a payment that went
    through at once, so however both paths and Stripe's events meet, the reader gets one
    welcome. Nobody is welcomed for a group's subscription (its admin buys seats, members get
    their invites), nor for a start scheduled at a trial's end (welcomed when it was scheduled).
    """
    if scheduled or subscription.group_id is not None or subscription.reader_id is None:
        return
    reader = session.get(Reader, subscription.reader_id)
    if reader is None:
        return
    welcome(
        session,
        reader,
        subscription.plan,
        first_charge_at=now,
        charged_now=True,
        key=subscription.stripe_id,
    )


def receipt(session: Session, invoice: Invoice) -> None:
    """The receipt of a paid invoice: amount, VAT, number and links to the invoice and its PDF."""
    to, name = _recipient(session.get_one(Customer, invoice.customer_id))
    subscription = (
        session.get(Subscription, invoice.subscription_id) if invoice.subscription_id else None
    )
    plan = subscription.plan if subscription is not None else None
    _send(
        session,
        to,
        "receipt",
        key=f"receipt:{invoice.stripe_id}",
        name=name,
        invoice=invoice,
        plan=plan,
    )


def after_invoice_sync(
    session: Session, invoice: Invoice, status_before: InvoiceStatus | None, *, now: datetime
) -> None:
    """Send the receipt when the mirror sees an invoice become paid with money taken.

    Only for payments of the last :data:`RECEIPT_WINDOW`: re-syncing old invoices into an empty
    mirror (``reconcile`` after a lost database) mails nobody.
    """
    if status_before == InvoiceStatus.PAID or invoice.status != InvoiceStatus.PAID:
        return
    if invoice.amount_paid <= 0 or (invoice.paid_at or invoice.created_at) < now - RECEIPT_WINDOW:
        return
    receipt(session, invoice)


def plan_switched(
    session: Session,
    reader: Reader,
    *,
    before: Plan,
    after: Plan,
    charged_now: int | None,
    next_charge_at: datetime | None,
    next_amount: int | None,
    credit: int,
    key: str,
) -> None:
    """Tell the reader what the switch changed: the new price, what was charged, what comes next."""
    _send(
        session,
        reader.email,
        "plan_switched",
        key=f"switched:{key}",
        name=reader.name,
        before=before,
        after=after,
        charged_now=charged_now,
        next_charge_at=next_charge_at,
        next_amount=next_amount,
        credit=credit,
        currency=after.currency,
    )


def cancelled(session: Session, reader: Reader, subscription: Subscription) -> None:
    """Confirm a cancellation, and until when the reader may still read."""
    ended = subscription.status in (
        SubscriptionStatus.CANCELED,
        SubscriptionStatus.INCOMPLETE_EXPIRED,
    )
    _send(
        session,
        reader.email,
        "cancelled",
        key=f"cancelled:{subscription.stripe_id}:{subscription.current_period_end.isoformat()}",
        name=reader.name,
        plan=subscription.plan,
        access_until=None if ended else subscription.current_period_end,
    )


def resumed(session: Session, reader: Reader, subscription: Subscription) -> None:
    """Confirm that a cancelled subscription continues, and its next charge."""
    _send(
        session,
        reader.email,
        "resumed",
        key=f"resumed:{subscription.stripe_id}:{subscription.current_period_end.isoformat()}",
        name=reader.name,
        plan=subscription.plan,
        next_charge_at=subscription.current_period_end,
    )


def card_updated(
    session: Session, reader: Reader, *, brand: str | None, last4: str | None, key: str
) -> None:
    """Confirm the new card (so a reader who did not change it can say so)."""
    _send(
        session,
        reader.email,
        "card_updated",
        key=f"card:{key}",
        name=reader.name,
        card_brand=brand,
        card_last4=last4,
    )


def password_changed(session: Session, reader: Reader, *, now: datetime) -> None:
    """Tell the reader their password changed (with what to do if it was not them)."""
    _send(
        session,
        reader.email,
        "password_changed",
        key=f"password:{reader.public_id}:{now.isoformat()}",
        name=reader.name,
        changed_at=now,
    )


def email_changed(session: Session, reader: Reader, *, old_email: str, now: datetime) -> None:
    """Tell the old address that the account moved to the new one."""
    _send(
        session,
        old_email,
        "email_changed",
        key=f"email:{reader.public_id}:{now.isoformat()}",
        name=reader.name,
        old_email=old_email,
        new_email=reader.email,
        changed_at=now,
    )


def due_renewal_notices(session: Session, *, now: datetime) -> list[int]:
    """Ids of yearly subscriptions renewing within :data:`RENEWAL_NOTICE_DAYS` whose reader has
    not been told about this renewal yet."""
    horizon = now + timedelta(days=RENEWAL_NOTICE_DAYS)
    rows = session.scalars(
        select(Subscription)
        .join(Plan, Subscription.plan_id == Plan.id)
        .where(
            Plan.interval == BillingInterval.YEAR,
            Subscription.status == SubscriptionStatus.ACTIVE,
            Subscription.cancel_at_period_end.is_(False),
            Subscription.current_period_end > now,
            Subscription.current_period_end <= horizon,
        )
        .order_by(Subscription.current_period_end, Subscription.id)
    )
    return [s.id for s in rows if s.renewal_notice_for != s.current_period_end]


def send_renewal_notice(session: Session, subscription_id: int) -> bool:
    """Mail one upcoming renewal (date, amount, how to cancel) once; False if already done."""
    subscription = session.scalar(
        select(Subscription).where(Subscription.id == subscription_id).with_for_update()
    )
    if subscription is None or subscription.renewal_notice_for == subscription.current_period_end:
        return False
    to, name = _recipient(subscription.customer)
    customer = subscription.customer
    amount = subscription.plan.amount * subscription.quantity
    _send(
        session,
        to,
        "renewal_upcoming",
        key=f"renewal:{subscription.stripe_id}:{subscription.current_period_end.isoformat()}",
        name=name,
        plan=subscription.plan,
        renews_at=subscription.current_period_end,
        amount=amount,
        credit=min(customer.credit, amount),
        charge=max(0, amount - customer.credit),
    )
    subscription.renewal_notice_for = subscription.current_period_end
    session.flush()
    return True
