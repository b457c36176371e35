"""The reader's data rights: a copy of their data (JSON), and erasure of their account.

Erasure keeps what the law requires and nothing that names the person: invoices stay (with the
customer mirror they belong to, its e-mail replaced), a running subscription is cancelled at the
end of its paid period (Stripe keeps billing records of its own), and the normalised e-mail
survives only as a hash (:func:`erased_email_hash`) on the trial and customer rows, where it still
blocks a second free trial for the same address.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash

from billing.errors import ValidationFailed
from billing.gateway import StripeGateway
from billing.models import (
    AuditLog,
    ComplimentaryGrant,
    Customer,
    GroupMembership,
    Invoice,
    OutboxMessage,
    Reader,
    ScheduledSubscription,
    SubscriptionStatus,
    Trial,
)

HASH_PREFIX = "sha256:"
ERASED_EMAIL = "erased@invalid"
"""What an erased customer's e-mail reads as in the mirror (``.invalid`` never delivers)."""


def erased_email_hash(canonical: str) -> str:
    """The form an erased account's normalised e-mail is kept in: ``sha256:<hex>``."""
    digest = hashlib.sha256(f"tollgate-erased-email:{canonical}".encode()).hexdigest()
    return f"{HASH_PREFIX}{digest}"


def _when(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def export(session: Session, reader: Reader) -> dict[str, Any]:
    """Everything Tollgate holds about the reader, as plain JSON-ready data (no password hash,
    no session token, no card number: Stripe holds the card; we hold its brand and last four)."""
    customer = session.scalar(select(Customer).where(Customer.reader_id == reader.id))
    invoices = (
        session.scalars(
            select(Invoice).where(Invoice.customer_id == customer.id).order_by(Invoice.created_at)
        ).all()
        if customer is not None
        else []
    )
    trial = reader.trial
    return {
        "account": {
            "id": reader.public_id,
            "email": reader.email,
            "name": reader.name,
            "country": reader.country,
            "email_verified_at": _when(reader.email_verified_at),
            "created_at": _when(reader.created_at),
        },
        "trial": None
        if trial is None
        else {
            "status": trial.status.value,
            "started_at": _when(trial.started_at),
            "ends_at": _when(trial.ends_at),
            "converted_at": _when(trial.converted_at),
        },
        "payment_method": None
        if customer is None
        else {"brand": customer.card_brand, "last4": customer.card_last4},
        "subscriptions": [
            {
                "id": s.public_id,
                "plan": s.plan.code,
                "status": s.status.value,
                "current_period_end": _when(s.current_period_end),
                "cancel_at_period_end": s.cancel_at_period_end,
                "created_at": _when(s.created_at),
            }
            for s in reader.subscriptions
        ],
        "invoices": [
            {
                "number": i.number,
                "date": _when(i.created_at),
                "status": i.status.value,
                "currency": i.currency,
                "total": i.total,
                "tax": i.tax,
                "amount_paid": i.amount_paid,
                "amount_refunded": i.amount_refunded,
                "country": i.customer_country,
            }
            for i in invoices
        ],
        "complimentary_access": [
            {"reason": g.reason, "starts_at": _when(g.starts_at), "expires_at": _when(g.expires_at)}
            for g in session.scalars(
                select(ComplimentaryGrant).where(ComplimentaryGrant.reader_id == reader.id)
            )
        ],
        "groups": [
            {"group": m.group.name, "role": m.role.value, "joined_at": _when(m.joined_at)}
            for m in session.scalars(
                select(GroupMembership).where(GroupMembership.reader_id == reader.id)
            )
        ],
        "mails": [
            {"sent_at": _when(m.sent_at), "subject": m.subject}
            for m in session.scalars(
                select(OutboxMessage)
                .where(OutboxMessage.to == reader.email)
                .order_by(OutboxMessage.created_at, OutboxMessage.id)
            )
        ],
        "activity": [
            {"at": _when(a.occurred_at), "action": a.action, "by": a.actor_label}
            for a in session.scalars(
                select(AuditLog)
                .where((AuditLog.actor_id == reader.id) | (AuditLog.target_id == reader.public_id))
                .order_by(AuditLog.occurred_at)
            )
        ],
        "amounts": "Money is in minor units (cents) of its currency.",
    }


def erase(
    session: Session, gateway: StripeGateway, reader: Reader, *, password: str, now: datetime
) -> None:
    """Erase the reader's account after checking their password (see the module's rules)."""
    from billing.services import payments

    if not check_password_hash(reader.password_hash, password):
        raise ValidationFailed("Your password is not correct.", field="password")
    running = [s for s in reader.subscriptions if not s.has_ended(now)]
    if any(
        s.status != SubscriptionStatus.INCOMPLETE and not s.cancel_at_period_end for s in running
    ):
        payments.cancel_at_period_end(session, gateway, reader, now=now)
    if session.scalar(
        select(ScheduledSubscription.id).where(
            ScheduledSubscription.reader_id == reader.id,
            ScheduledSubscription.started_at.is_(None),
        )
    ):
        payments.cancel_scheduled(session, reader, now=now)
    hashed = erased_email_hash(reader.email_canonical)
    for trial in session.scalars(
        select(Trial).where(Trial.email_canonical == reader.email_canonical)
    ):
        trial.email_canonical = hashed
    for customer in session.scalars(
        select(Customer).where(
            (Customer.reader_id == reader.id) | (Customer.email_canonical == reader.email_canonical)
        )
    ):
        customer.email = ERASED_EMAIL
        customer.email_canonical = hashed
    session.flush()
    session.delete(reader)
    session.flush()
