"""Builders of report histories: invoices, refunds and ledger entries written straight to the
database (what the mirror writes), for the report tests and their generated histories."""

from __future__ import annotations

import itertools
from datetime import datetime

from sqlalchemy.orm import Session

from billing.models import (
    Customer,
    Group,
    Invoice,
    InvoiceStatus,
    Plan,
    Reader,
    Refund,
    Subscription,
    SubscriptionEvent,
    SubscriptionEventKind,
    SubscriptionStatus,
)
from billing.services.accounts import canonical_email

_ids = itertools.count(1)


def plan(
    session: Session,
    code: str = "individual-monthly",
    amount: int = 1200,
    interval: str = "month",
    currency: str = "eur",
) -> Plan:
    """A plan (found by code, or added)."""
    found = session.query(Plan).filter_by(code=code).one_or_none()
    if found is not None:
        return found
    row = Plan(
        code=code, name=code, kind="individual", interval=interval, amount=amount, currency=currency
    )
    session.add(row)
    session.flush()
    return row


def customer(
    session: Session, at: datetime, *, country: str = "BE", group: bool = False
) -> Customer:
    """A reader's (or a group's) Stripe customer."""
    n = next(_ids)
    email = f"history{n}@example.org"
    row = Customer(
        stripe_id=f"cus_h{n}",
        email=email,
        email_canonical=canonical_email(email),
        country=country,
        created_at=at,
    )
    if group:
        owner = Group(name=f"Group {n}", billing_email=email, country=country, created_at=at)
        session.add(owner)
        session.flush()
        row.group_id = owner.id
    else:
        reader = Reader(
            email=email,
            email_canonical=row.email_canonical,
            name=f"History {n}",
            country=country,
            password_hash="x",
            created_at=at,
        )
        session.add(reader)
        session.flush()
        row.reader_id = reader.id
    session.add(row)
    session.flush()
    return row


def subscription(
    session: Session, owner: Customer, of: Plan, at: datetime, quantity: int = 1
) -> Subscription:
    """A subscription of ``owner`` started at ``at``."""
    row = Subscription(
        stripe_id=f"sub_h{next(_ids)}",
        customer_id=owner.id,
        reader_id=owner.reader_id,
        group_id=owner.group_id,
        plan_id=of.id,
        status=SubscriptionStatus.ACTIVE,
        quantity=quantity,
        current_period_start=at,
        current_period_end=at,
        created_at=at,
        updated_at=at,
    )
    session.add(row)
    session.flush()
    return row


def invoice(
    session: Session,
    owner: Customer,
    at: datetime,
    total: int,
    tax: int,
    *,
    sub: Subscription | None = None,
    country: str | None = None,
    currency: str = "eur",
    status: InvoiceStatus = InvoiceStatus.PAID,
    vat_id: str | None = None,
) -> Invoice:
    """An invoice of ``owner`` issued (and, when paid, paid) at ``at``."""
    paid = max(total, 0) if status == InvoiceStatus.PAID else 0  # a credit is paid with nothing
    row = Invoice(
        stripe_id=f"in_h{next(_ids)}",
        number=f"H-{next(_ids):06d}",
        customer_id=owner.id,
        subscription_id=sub.id if sub is not None else None,
        status=status,
        currency=currency,
        subtotal=total,
        tax=tax,
        total=total,
        amount_paid=paid,
        customer_country=country or owner.country,
        customer_vat_id=vat_id,
        created_at=at,
        paid_at=at if paid else None,
    )
    session.add(row)
    session.flush()
    return row


def refund(session: Session, of: Invoice, amount: int, at: datetime) -> Refund:
    """A refund of ``amount`` of an invoice at ``at`` (its refunded total follows)."""
    row = Refund(
        stripe_id=f"re_h{next(_ids)}",
        invoice_id=of.id,
        amount=amount,
        currency=of.currency,
        status="succeeded",
        created_at=at,
    )
    of.amount_refunded += amount
    session.add(row)
    session.flush()
    return row


def entry(
    session: Session,
    sub: Subscription,
    kind: SubscriptionEventKind,
    at: datetime,
    before: int,
    after: int,
    currency: str = "eur",
) -> SubscriptionEvent:
    """A ledger entry of ``sub`` moving its MRR from ``before`` to ``after`` at ``at``."""
    row = SubscriptionEvent(
        subscription_id=sub.id,
        kind=kind,
        occurred_at=at,
        currency=currency,
        mrr_before=before,
        mrr_after=after,
        mrr_delta=after - before,
    )
    session.add(row)
    session.flush()
    return row
