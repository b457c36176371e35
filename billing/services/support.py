"""Support staff's tools: find a reader, and act for them, each action with a reason that lands
in the audit log with what it changed (before and after).

Staff never see or change passwords or card data: the tools send the reader a reset link, and the
only card facts shown are those the reader's own account page shows. Every function takes the
session, the acting staff member and ``now``, and never commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, union
from sqlalchemy.orm import Session

from billing.errors import Conflict, NotFound, ValidationFailed
from billing.gateway import StripeGateway
from billing.models import (
    ComplimentaryGrant,
    Customer,
    Invoice,
    InvoiceStatus,
    Reader,
    Subscription,
    Trial,
    TrialStatus,
    WebhookEvent,
    WebhookEventStatus,
)
from billing.services import audit, stripe_mirror

REASON_MAX_LENGTH = 500
MAX_TRIAL_EXTENSION_DAYS = 90
MAX_GRANT_DAYS = 3 * 366
FOUND_LIMIT = 50


@dataclass(frozen=True)
class Acting:
    """Who acts, from where, and why (the reason every support action asks for)."""

    staff: Reader
    reason: str
    ip: str | None = None


def check_reason(reason: str | None) -> str:
    """The reason, trimmed; refused when empty or too long."""
    text = (reason or "").strip()
    if not text:
        raise ValidationFailed("Say why (it goes in the audit log).", field="reason")
    if len(text) > REASON_MAX_LENGTH:
        raise ValidationFailed(f"Use at most {REASON_MAX_LENGTH} characters.", field="reason")
    return text


def _log(
    session: Session,
    acting: Acting,
    now: datetime,
    action: str,
    target: Any,
    before: dict[str, Any],
    after: dict[str, Any],
    **extra: Any,
) -> None:
    audit.record(
        session,
        now=now,
        actor=acting.staff,
        action=action,
        target=target,
        details={"reason": acting.reason, "before": before, "after": after, **extra},
        ip=acting.ip,
    )


def find(session: Session, query: str) -> list[Reader]:
    """Readers whose e-mail or name contains ``query``, or whose reader id or Stripe id (customer,
    subscription or invoice) it is; at most 50, newest first."""
    text = query.strip()
    if not text:
        return []
    by_stripe = union(
        select(Customer.reader_id).where(Customer.stripe_id == text),
        select(Subscription.reader_id).where(Subscription.stripe_id == text),
        select(Customer.reader_id)
        .join(Invoice, Invoice.customer_id == Customer.id)
        .where(Invoice.stripe_id == text),
    )
    return list(
        session.scalars(
            select(Reader)
            .where(
                or_(
                    Reader.email.icontains(text, autoescape=True),
                    Reader.name.icontains(text, autoescape=True),
                    Reader.public_id == text,
                    Reader.id.in_(by_stripe),
                )
            )
            .order_by(Reader.created_at.desc(), Reader.id.desc())
            .limit(FOUND_LIMIT)
        )
    )


def _trial_state(trial: Trial) -> dict[str, Any]:
    return {"status": trial.status.value, "ends_at": trial.ends_at.isoformat()}


def extend_trial(
    session: Session, reader: Reader, days: int, acting: Acting, *, now: datetime
) -> Trial:
    """Give the reader ``days`` more free days: from the trial's end, or from now when it has
    expired (it runs again). A converted trial is not extended: the reader is paying."""
    if not 1 <= days <= MAX_TRIAL_EXTENSION_DAYS:
        raise ValidationFailed(f"Extend by 1 to {MAX_TRIAL_EXTENSION_DAYS} days.", field="days")
    trial = reader.trial
    if trial is None:
        raise Conflict("This reader never took a trial: grant access instead.", field="days")
    if trial.status == TrialStatus.CONVERTED:
        raise Conflict("This trial turned into a subscription.", field="days")
    before = _trial_state(trial)
    trial.ends_at = max(trial.ends_at, now) + timedelta(days=days)
    if trial.status == TrialStatus.EXPIRED:
        trial.status = TrialStatus.ACTIVE
        trial.ended_mail_sent_at = None
    trial.reminder_sent_at = None
    session.flush()
    _log(
        session,
        acting,
        now,
        "support.trial_extended",
        reader,
        before,
        _trial_state(trial),
        days=days,
    )
    return trial


def grant_access(
    session: Session, reader: Reader, expires_at: datetime, acting: Acting, *, now: datetime
) -> ComplimentaryGrant:
    """Complimentary access from now until ``expires_at`` (the reason is the grant's)."""
    if expires_at <= now:
        raise ValidationFailed("The access must end in the future.", field="expires_at")
    if expires_at > now + timedelta(days=MAX_GRANT_DAYS):
        raise ValidationFailed("Grant at most three years at a time.", field="expires_at")
    grant = ComplimentaryGrant(
        reader_id=reader.id,
        reason=acting.reason,
        granted_by_id=acting.staff.id,
        starts_at=now,
        expires_at=expires_at,
        created_at=now,
    )
    session.add(grant)
    session.flush()
    after = {"grant": grant.id, "expires_at": expires_at.isoformat()}
    _log(session, acting, now, "support.access_granted", reader, {}, after)
    return grant


def revoke_grant(
    session: Session, reader: Reader, grant_id: int, acting: Acting, *, now: datetime
) -> ComplimentaryGrant:
    """End a complimentary grant of the reader now."""
    grant = session.get(ComplimentaryGrant, grant_id)
    if grant is None or grant.reader_id != reader.id:
        raise NotFound("This reader has no such grant.", field="grant")
    if grant.revoked_at is not None:
        raise Conflict("This grant was revoked already.", field="grant")
    before = {"grant": grant.id, "revoked_at": None}
    grant.revoked_at = now
    session.flush()
    after = {"grant": grant.id, "revoked_at": now.isoformat()}
    _log(session, acting, now, "support.access_revoked", reader, before, after)
    return grant


def record_mail(
    session: Session, reader: Reader, action: str, acting: Acting, *, now: datetime
) -> None:
    """Log that a mail was sent to the reader for them (verification, password reset)."""
    _log(session, acting, now, action, reader, {}, {"to": reader.email})


def cancel_subscription(
    session: Session,
    gateway: StripeGateway,
    reader: Reader,
    at_period_end: bool,
    acting: Acting,
    *,
    now: datetime,
) -> Subscription:
    """Cancel the reader's subscription for them, now or at the end of the paid period."""
    from billing.services import payments

    running = [s for s in reader.subscriptions if not s.has_ended(now)]
    before = {"subscriptions": [_sub_state(s) for s in running]}
    if at_period_end:
        subscription = payments.cancel_at_period_end(session, gateway, reader, now=now)
    else:
        subscription = payments.cancel_now(session, gateway, reader, now=now)
    after = {"subscriptions": [_sub_state(subscription)]}
    _log(
        session,
        acting,
        now,
        "support.subscription_cancelled",
        reader,
        before,
        after,
        at_period_end=at_period_end,
    )
    return subscription


def _sub_state(subscription: Subscription) -> dict[str, Any]:
    return {
        "id": subscription.public_id,
        "status": subscription.status.value,
        "cancel_at_period_end": subscription.cancel_at_period_end,
    }


def refund_invoice(
    session: Session,
    gateway: StripeGateway,
    reader: Reader,
    invoice_id: int,
    amount: int,
    acting: Acting,
    *,
    now: datetime,
) -> Invoice:
    """Refund ``amount`` (minor units) of a paid invoice of the reader, at most what is left."""
    invoice = session.get(Invoice, invoice_id)
    customer = stripe_mirror.customer_of(session, reader)
    if invoice is None or customer is None or invoice.customer_id != customer.id:
        raise NotFound("This reader has no such invoice.", field="invoice")
    left = invoice.amount_paid - invoice.amount_refunded
    if invoice.status != InvoiceStatus.PAID or left <= 0:
        raise Conflict("Nothing of this invoice is left to refund.", field="amount")
    if not 1 <= amount <= left:
        raise ValidationFailed(
            f"Refund between 0.01 and {left / 100:.2f} {invoice.currency.upper()}.",
            field="amount",
        )
    before = {"invoice": invoice.stripe_id, "refunded": invoice.amount_refunded}
    refund = gateway.refund_invoice(
        invoice.stripe_id, amount=amount, reason="requested_by_customer"
    )
    if refund.charge_id is not None:
        stripe_mirror.sync_charge_refunds(session, gateway, refund.charge_id, now=now)
    session.refresh(invoice)
    after = {"invoice": invoice.stripe_id, "refunded": invoice.amount_refunded}
    _log(
        session,
        acting,
        now,
        "support.invoice_refunded",
        reader,
        before,
        after,
        amount=amount,
        refund=refund.id,
    )
    return invoice


def troubled_events(session: Session, limit: int = 100) -> list[WebhookEvent]:
    """Stripe events whose handling failed (the newest first)."""
    return list(
        session.scalars(
            select(WebhookEvent)
            .where(WebhookEvent.status == WebhookEventStatus.FAILED)
            .order_by(WebhookEvent.received_at.desc(), WebhookEvent.id.desc())
            .limit(limit)
        )
    )
