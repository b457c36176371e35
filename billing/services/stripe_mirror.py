"""The mirror of Stripe: customers, subscriptions, invoices, refunds, disputes and the MRR ledger.

Stripe is the source of truth for money; this module keeps our mirror of it (customers,
subscriptions, invoices, refunds, disputes and the :class:`SubscriptionEvent` ledger). The webhook
handlers, ``flask billing reconcile`` and the reader's self-service actions
(:mod:`billing.services.payments`) call only the public functions below. Every function takes the
session (and the gateway and ``now`` where it needs them) and never commits.

**Re-fetch, lock, upsert.** ``sync_*`` re-fetch an object from Stripe and upsert it. They take the
mirror row's lock (``SELECT ... FOR UPDATE``; a no-op on SQLite, where the webhook's claim already
serialises writers) *before* fetching, so whatever order events arrive in, the last writer writes
the newest truth. Locks are always taken in one order (dispute, invoice, subscription, customer,
refund), so concurrent handlers wait for each other instead of deadlocking; the reader's own
actions lock the reader first and then go through the same ``sync_*`` code. Objects that are not
ours (:func:`billing.gateway.is_ours`) are ignored (``None``). An object of ours that cannot be tied
to a reader, group or plan yet raises :class:`UnlinkedObject`, so its event is retried, never
dropped. An object Stripe says does not exist is not retried forever: a customer is marked
deleted; a subscription, invoice or dispute keeps its last mirrored state (``flask billing
reconcile`` reports it), and the call returns that row (or ``None``).

**The ledger.** Every upsert of a subscription compares the mirror before and after and appends
the :class:`SubscriptionEvent` rows for what changed (see :func:`_ledger`); an upsert that changes
nothing appends nothing, so the same event handled any number of times has one effect. Likewise a
subscription turning past due or unpaid mails its reader once per failure
(:func:`mail_payment_problem`), not once per event, and one leaving ``incomplete`` for
``active`` (a first payment confirmed with 3-D Secure or paid with another card) welcomes its
reader (:func:`billing.services.notices.after_first_payment`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Generic, TypeVar

from flask import current_app
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from billing.gateway import (
    CardData,
    StripeCustomerData,
    StripeGateway,
    StripeInvoiceData,
    StripeObjectNotFoundError,
    StripeSubscriptionData,
    is_ours,
)
from billing.models import (
    CollectionMethod,
    Customer,
    Dispute,
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
from billing.models.payments import ENDED_STATUSES
from billing.services import mail, notices, taxes
from billing.services.accounts import by_public_id, canonical_email

log = logging.getLogger(__name__)

PROBLEM_STATUSES = frozenset(
    {SubscriptionStatus.PAST_DUE, SubscriptionStatus.UNPAID, SubscriptionStatus.INCOMPLETE}
)
"""A payment is failing: the reader should fix their card (the account page shows a banner)."""

DUNNING_STATUSES = frozenset({SubscriptionStatus.PAST_DUE, SubscriptionStatus.UNPAID})
"""A renewal (or a plan change's charge) failed: Stripe retries, the reader must fix the card."""

NOT_STARTED_STATUSES = frozenset({SubscriptionStatus.INCOMPLETE, SubscriptionStatus.TRIALING})
"""Nothing paid yet: such a subscription adds nothing to MRR and has no ledger entry."""

DISPUTE_CLOSED_STATUSES = frozenset({"won", "lost", "warning_closed"})

_Row = TypeVar("_Row", Customer, Subscription, Invoice, Refund, Dispute)


# --- errors and results -------------------------------------------------------------------------


class UnlinkedObject(Exception):
    """A Stripe object of ours cannot be tied to a reader, group or plan yet: retry later."""


class Change(StrEnum):
    """What an upsert did to the mirror (``flask billing reconcile`` counts them)."""

    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    MISSING = "missing"
    """Stripe says the object does not exist; the mirror keeps its last state."""


@dataclass(frozen=True)
class _Synced(Generic[_Row]):
    row: _Row | None
    change: Change


# --- the mirror ---------------------------------------------------------------------------------


def sync_subscription(
    session: Session,
    gateway: StripeGateway,
    stripe_subscription_id: str,
    *,
    now: datetime,
    event_id: str | None = None,
) -> Subscription | None:
    """Re-fetch a subscription and upsert it (with its ledger entries); None when not ours."""
    return _sync_subscription(session, gateway, stripe_subscription_id, now, event_id).row


def sync_invoice(
    session: Session,
    gateway: StripeGateway,
    stripe_invoice_id: str,
    *,
    now: datetime,
    event_id: str | None = None,
) -> Invoice | None:
    """Re-fetch an invoice and upsert it, re-syncing its subscription; None when not ours."""
    return _sync_invoice(session, gateway, stripe_invoice_id, now, event_id, True).row


def sync_customer(
    session: Session, gateway: StripeGateway, stripe_customer_id: str, *, now: datetime
) -> Customer | None:
    """Re-fetch a customer and upsert it (deleted on Stripe: marked deleted); None when not ours."""
    return _sync_customer(session, gateway, stripe_customer_id, now).row


def sync_charge_refunds(
    session: Session,
    gateway: StripeGateway,
    stripe_charge_id: str,
    *,
    now: datetime,
    event_id: str | None = None,
) -> list[Refund]:
    """Mirror every refund of a charge and the refunded total of the invoice it paid.

    Each refund seen for the first time appends a ``refunded`` ledger entry to the invoice's
    subscription (MRR unchanged). Returns the charge's refunds (none when the charge is not ours).
    """
    try:
        charge = gateway.retrieve_charge(stripe_charge_id)
    except StripeObjectNotFoundError:
        log.warning("charge %s does not exist on Stripe; nothing to mirror", stripe_charge_id)
        return []
    if not is_ours(charge):
        return []
    invoice = (
        _sync_invoice(session, gateway, charge.invoice_id, now, event_id, False).row
        if charge.invoice_id
        else None
    )
    refunds: list[Refund] = []
    found = gateway.list_refunds(stripe_charge_id)
    refund_taxes = taxes.refund_taxes(session, invoice, found)
    for data in found:
        values: dict[str, Any] = {
            "invoice_id": invoice.id if invoice is not None else None,
            "stripe_charge_id": stripe_charge_id,
            "amount": data.amount,
            "currency": data.currency,
            "status": data.status,
            "reason": data.reason,
            "created_at": data.created,
            "tax": refund_taxes[data.id],
        }
        synced = _upsert(session, Refund, data.id, values, _locked(session, Refund, data.id))
        assert synced.row is not None
        refunds.append(synced.row)
        if synced.change == Change.CREATED and invoice is not None and invoice.subscription_id:
            _refund_entry(session, invoice, synced.row, now=now, event_id=event_id)
    if invoice is not None:
        refunded = min(charge.amount_refunded, invoice.amount_paid)
        if invoice.amount_refunded != refunded:
            invoice.amount_refunded = refunded
            session.flush()
    return refunds


def sync_dispute(
    session: Session,
    gateway: StripeGateway,
    stripe_dispute_id: str,
    *,
    now: datetime,
    event_id: str | None = None,
) -> Dispute | None:
    """Re-fetch a dispute (chargeback) and upsert it against its invoice; None when not ours.

    ``closed_at`` is set the first time the dispute is seen won, lost or closed.
    """
    existing = _locked(session, Dispute, stripe_dispute_id)
    try:
        data = gateway.retrieve_dispute(stripe_dispute_id)
    except StripeObjectNotFoundError:
        log.warning("dispute %s does not exist on Stripe; mirror left as is", stripe_dispute_id)
        return existing
    if not is_ours(data):
        return None
    invoice = None
    if data.charge_id:
        charge = gateway.retrieve_charge(data.charge_id)
        if charge.invoice_id:
            invoice = _sync_invoice(session, gateway, charge.invoice_id, now, event_id, False).row
    closed = data.status in DISPUTE_CLOSED_STATUSES
    values: dict[str, Any] = {
        "invoice_id": invoice.id if invoice is not None else None,
        "stripe_charge_id": data.charge_id,
        "amount": data.amount,
        "currency": data.currency,
        "status": data.status,
        "reason": data.reason,
        "created_at": data.created,
    }
    if existing is None or (closed and existing.closed_at is None):
        values["closed_at"] = now if closed else None
    return _upsert(session, Dispute, data.id, values, existing).row


def resync(
    session: Session, gateway: StripeGateway, kind: str, stripe_id: str, *, now: datetime
) -> Change:
    """Re-sync one ``customer``, ``subscription`` or ``invoice`` and say what changed (reconcile)."""
    if kind == "customer":
        return _sync_customer(session, gateway, stripe_id, now).change
    if kind == "subscription":
        return _sync_subscription(session, gateway, stripe_id, now, None).change
    if kind == "invoice":
        return _sync_invoice(session, gateway, stripe_id, now, None, False).change
    raise ValueError(f"cannot re-sync a {kind!r}")


# --- mirror internals ---------------------------------------------------------------------------


def _locked(session: Session, model: type[_Row], stripe_id: str) -> _Row | None:
    """The mirror row of ``stripe_id``, locked for this transaction and freshly read."""
    return session.scalar(
        select(model)
        .where(model.stripe_id == stripe_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


def by_stripe_id(session: Session, model: type[_Row], stripe_id: str) -> _Row | None:
    """The mirror row of ``stripe_id`` as the session sees it (no lock), or None.

    Shared with :mod:`billing.services.payments`: after changing a subscription on Stripe it
    finds the row the mirror just synced.
    """
    return session.scalar(select(model).where(model.stripe_id == stripe_id))


def assign(row: Any, values: Mapping[str, Any]) -> bool:
    """Set the attributes that differ; True when any did (unchanged rows stay clean)."""
    changed = False
    for name, value in values.items():
        if getattr(row, name) != value:
            setattr(row, name, value)
            changed = True
    return changed


def _insert(session: Session, row: Any) -> bool:
    """Insert ``row``; False when a concurrent transaction inserted the same Stripe id first.

    On PostgreSQL the insert runs in a savepoint, so losing that race only undoes the insert. On
    SQLite writers are serialised (and pysqlite's savepoints would commit early), so it is plain.
    """
    if session.get_bind().dialect.name != "postgresql":
        session.add(row)
        session.flush()
        return True
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        return False
    return True


def _upsert(
    session: Session,
    model: type[_Row],
    stripe_id: str,
    values: Mapping[str, Any],
    row: _Row | None,
) -> _Synced[_Row]:
    """Insert or update the mirror row of ``stripe_id`` with ``values``; ``row`` is what
    :func:`_locked` found for it."""
    for _ in range(2):
        if row is None:
            row = model(stripe_id=stripe_id, **values)
            if _insert(session, row):
                return _Synced(row, Change.CREATED)
            row = _locked(session, model, stripe_id)
            continue
        changed = assign(row, values)
        session.flush()
        return _Synced(row, Change.UPDATED if changed else Change.UNCHANGED)
    raise RuntimeError(f"could not upsert {model.__name__} {stripe_id}")


def _sync_customer(
    session: Session,
    gateway: StripeGateway,
    stripe_customer_id: str,
    now: datetime,
    hints: Mapping[str, str] | None = None,
) -> _Synced[Customer]:
    row = _locked(session, Customer, stripe_customer_id)
    try:
        data = gateway.retrieve_customer(stripe_customer_id)
    except StripeObjectNotFoundError:
        data = StripeCustomerData(
            id=stripe_customer_id,
            email=None,
            name=None,
            country=None,
            default_payment_method_id=None,
            created=None,
            deleted=True,
        )
    if data.deleted:
        if row is None:
            return _Synced(None, Change.UNCHANGED)
        if row.deleted_at is not None:
            return _Synced(row, Change.UNCHANGED)
        row.deleted_at = now
        session.flush()
        return _Synced(row, Change.UPDATED)
    if not is_ours(data):
        return _Synced(None, Change.UNCHANGED)
    values: dict[str, Any] = {
        "default_payment_method_id": data.default_payment_method_id,
        "balance": data.balance,
    }
    if row is None:
        values.update(_new_customer_values(session, data, {**(hints or {}), **data.metadata}))
        values["created_at"] = data.created or now
    else:
        values.update(email=data.email or row.email, country=data.country or row.country)
    if row is None or row.default_payment_method_id != data.default_payment_method_id:
        card = gateway.default_card(data.id) if data.default_payment_method_id else None
        values.update(
            card_brand=card_label(card) if card else None,
            card_last4=card.last4 if card else None,
        )
    return _upsert(session, Customer, data.id, values, row)


def _new_customer_values(
    session: Session, data: StripeCustomerData, metadata: Mapping[str, str]
) -> dict[str, Any]:
    """Owner, e-mail and country of a customer we see for the first time, from its metadata.

    A reader who already has another customer keeps it: the new one is mirrored unlinked.
    """
    reader, group = _owner(session, metadata)
    if reader is not None:
        email = data.email or reader.email
        linked = customer_of(session, reader) is None
        return {
            "reader_id": reader.id if linked else None,
            "email": email,
            "email_canonical": reader.email_canonical,
            "country": data.country or reader.country,
        }
    if group is not None:
        email = data.email or group.billing_email
        return {
            "group_id": group.id,
            "email": email,
            "email_canonical": canonical_email(email.strip().lower()),
            "country": data.country or group.country,
        }
    raise UnlinkedObject(
        f"Stripe customer {data.id} names no reader or group of ours ({metadata})."
    )


def _owner(session: Session, metadata: Mapping[str, str]) -> tuple[Reader | None, Group | None]:
    """The reader or group a Stripe object names in its ``tollgate_*`` metadata, if we have it."""
    reader_id = metadata.get("tollgate_reader_id")
    if reader_id:
        return by_public_id(session, reader_id), None
    group_id = metadata.get("tollgate_group_id")
    if group_id:
        return None, session.scalar(select(Group).where(Group.public_id == group_id))
    return None, None


def _customer_for(
    session: Session,
    gateway: StripeGateway,
    stripe_customer_id: str,
    hints: Mapping[str, str],
    now: datetime,
) -> Customer:
    """Our customer row for ``stripe_customer_id``, linked now from metadata if it is new."""
    customer = by_stripe_id(session, Customer, stripe_customer_id)
    if customer is not None:
        return customer
    customer = _sync_customer(session, gateway, stripe_customer_id, now, hints).row
    if customer is None:
        raise UnlinkedObject(f"Stripe customer {stripe_customer_id} is not one of ours (yet).")
    return customer


def _plan_for(session: Session, gateway: StripeGateway, price_id: str) -> Plan:
    """The plan sold at ``price_id``: by its id, else by the price's ``tollgate_plan`` (an older
    price of a plan whose amount changed)."""
    plan = session.scalar(select(Plan).where(Plan.stripe_price_id == price_id))
    if plan is not None:
        return plan
    try:
        price = gateway.retrieve_price(price_id)
    except StripeObjectNotFoundError:
        price = None
    code = price.metadata.get("tollgate_plan") if price is not None and is_ours(price) else None
    plan = session.scalar(select(Plan).where(Plan.code == code)) if code else None
    if plan is None:
        raise UnlinkedObject(
            f"Price {price_id} is none of our plans (run flask billing sync-plans)."
        )
    return plan


@dataclass(frozen=True)
class _State:
    """What the ledger compares: a subscription's state before and after an upsert."""

    status: SubscriptionStatus
    plan: Plan
    quantity: int
    period_start: datetime
    cancel_at_period_end: bool
    mrr: int

    @classmethod
    def of(cls, row: Subscription) -> _State:
        return cls(
            row.status,
            row.plan,
            row.quantity,
            row.current_period_start,
            row.cancel_at_period_end,
            row.monthly_revenue(),
        )


def _sync_subscription(
    session: Session,
    gateway: StripeGateway,
    stripe_subscription_id: str,
    now: datetime,
    event_id: str | None,
) -> _Synced[Subscription]:
    for _ in range(2):
        row = _locked(session, Subscription, stripe_subscription_id)
        try:
            data = gateway.retrieve_subscription(stripe_subscription_id)
        except StripeObjectNotFoundError:
            log.warning("subscription %s does not exist on Stripe", stripe_subscription_id)
            return _Synced(row, Change.MISSING)
        synced = _apply_subscription(session, gateway, data, row, now=now, event_id=event_id)
        if synced is not None:
            return synced
    raise RuntimeError(f"could not upsert subscription {stripe_subscription_id}")


def _apply_subscription(
    session: Session,
    gateway: StripeGateway,
    data: StripeSubscriptionData,
    row: Subscription | None,
    *,
    now: datetime,
    event_id: str | None,
) -> _Synced[Subscription] | None:
    """Upsert ``data`` into ``row`` (locked, or None for a new one) and append ledger entries;
    None when a concurrent transaction inserted it first (the caller starts over)."""
    if not is_ours(data):
        return _Synced(None, Change.UNCHANGED)
    plan = _plan_for(session, gateway, data.price_id)
    customer = _customer_for(session, gateway, data.customer_id, data.metadata, now)
    status = SubscriptionStatus(data.status)
    reader_id = customer.reader_id
    if reader_id is None and customer.group_id is None:
        reader, _ = _owner(session, data.metadata)
        reader_id = reader.id if reader is not None else None
    values: dict[str, Any] = {
        "customer": customer,
        "plan": plan,
        "reader_id": reader_id,
        "group_id": customer.group_id,
        "status": status,
        "quantity": data.quantity,
        "current_period_start": data.current_period_start,
        "current_period_end": data.current_period_end,
        "cancel_at_period_end": data.cancel_at_period_end,
        "canceled_at": data.canceled_at,
        "ended_at": data.ended_at,
        "trial_end": data.trial_end,
        "collection_method": CollectionMethod(data.collection_method),
        "tax_rate_id": taxes.stored_tax_rate_id(session, data.tax_rate_ids),
    }
    if row is None:
        # By id: a relationship would put the row in the session before the insert's savepoint.
        del values["customer"], values["plan"]
        row = Subscription(
            stripe_id=data.id,
            customer_id=customer.id,
            plan_id=plan.id,
            created_at=data.created,
            updated_at=now,
            last_stripe_event_id=event_id,
            past_due_since=now if status == SubscriptionStatus.PAST_DUE else None,
            **values,
        )
        if not _insert(session, row):
            return None
        _ledger(session, gateway, row, None, _State.of(row), data, now=now, event_id=event_id)
        if status in DUNNING_STATUSES:
            mail_payment_problem(session, gateway, row, data.latest_invoice_id)
        return _Synced(row, Change.CREATED)
    before = _State.of(row)
    if status == SubscriptionStatus.PAST_DUE:
        values["past_due_since"] = row.past_due_since or now
    elif status != SubscriptionStatus.UNPAID:
        values["past_due_since"] = None
    if not assign(row, values):
        if status not in NOT_STARTED_STATUSES | ENDED_STATUSES and not _has_started(session, row):
            # Unchanged, yet perhaps paid since: a SEPA debit clears days after it started.
            _ledger(session, gateway, row, before, before, data, now=now, event_id=event_id)
        return _Synced(row, Change.UNCHANGED)
    row.updated_at = now
    if event_id is not None:
        row.last_stripe_event_id = event_id
    session.flush()
    _ledger(session, gateway, row, before, _State.of(row), data, now=now, event_id=event_id)
    if status in DUNNING_STATUSES and before.status not in DUNNING_STATUSES:
        mail_payment_problem(session, gateway, row, data.latest_invoice_id)
    if before.status == SubscriptionStatus.INCOMPLETE and status == SubscriptionStatus.ACTIVE:
        scheduled = bool(data.metadata.get("tollgate_scheduled_id"))
        notices.after_first_payment(session, row, scheduled=scheduled, now=now)
    return _Synced(row, Change.UPDATED)


def _ledger(
    session: Session,
    gateway: StripeGateway,
    row: Subscription,
    before: _State | None,
    after: _State,
    data: StripeSubscriptionData,
    *,
    now: datetime,
    event_id: str | None,
) -> None:
    """Append the ledger entries for the change from ``before`` (None: first sight) to ``after``.

    - A subscription starts in the ledger when its first payment succeeds, whatever its status
      says: Stripe calls a subscription paid by a pending SEPA debit ``active`` before the money
      arrives. Until then (``incomplete``, ``trialing``, or ``active`` with nothing paid) it has
      no entry and adds nothing to MRR; one that ends unpaid never gets any (nothing was earned,
      nothing churned), and once ended nothing more is appended.
    - Its start: ``created``, or ``converted`` when it started from a trial (a scheduled start,
      or Stripe's own trial), at the time of its first payment, MRR 0 -> the plan's monthly
      amount. Seen for the first time already ended, it gets its start and ``ended``.
    - ``ended`` (status ``canceled``/``incomplete_expired``): MRR -> 0, at Stripe's end time.
    - Of a running one: ``upgraded``/``downgraded`` (another plan; by monthly amount),
      ``seats_changed`` (quantity), ``renewed`` (a new period on the same plan), ``past_due``,
      ``recovered`` (past due or unpaid -> active), ``cancelled`` (cancel at period end set),
      ``reactivated`` (unset).
    """
    entries: list[tuple[SubscriptionEventKind, int, int, datetime, dict[str, Any]]] = []
    ended = after.status in ENDED_STATUSES
    code = after.plan.code
    if before is not None and before.status in ENDED_STATUSES:
        return
    if before is None or not _has_started(session, row):
        if after.status in NOT_STARTED_STATUSES:
            return
        paid_at = _first_payment(gateway, data.id)
        if paid_at is None:
            return
        full = after.plan.monthly_amount(after.quantity)
        converted = bool(data.metadata.get("tollgate_scheduled_id")) or (
            before is not None and before.status == SubscriptionStatus.TRIALING
        )
        kind = SubscriptionEventKind.CONVERTED if converted else SubscriptionEventKind.CREATED
        details = {"plan": code, "quantity": after.quantity}
        entries.append((kind, 0, full, paid_at, details))
        if ended:
            entries.append((SubscriptionEventKind.ENDED, full, 0, data.ended_at or now, {}))
        else:
            if after.status == SubscriptionStatus.PAST_DUE:
                entries.append((SubscriptionEventKind.PAST_DUE, full, full, now, {}))
            if after.cancel_at_period_end:
                cancelled_at = data.canceled_at or now
                entries.append((SubscriptionEventKind.CANCELLED, full, full, cancelled_at, {}))
    elif ended:
        entries.append((SubscriptionEventKind.ENDED, before.mrr, 0, data.ended_at or now, {}))
    else:
        mrr = before.mrr
        if after.plan.id != before.plan.id:
            kind = (
                SubscriptionEventKind.UPGRADED
                if after.mrr >= mrr
                else SubscriptionEventKind.DOWNGRADED
            )
            details = {"from_plan": before.plan.code, "to_plan": code, "quantity": after.quantity}
            entries.append((kind, mrr, after.mrr, now, details))
            mrr = after.mrr
        elif after.quantity != before.quantity:
            details = {"from": before.quantity, "to": after.quantity}
            entries.append((SubscriptionEventKind.SEATS_CHANGED, mrr, after.mrr, now, details))
            mrr = after.mrr
        if after.plan.id == before.plan.id and after.period_start > before.period_start:
            details = {"period_start": after.period_start.isoformat()}
            entries.append((SubscriptionEventKind.RENEWED, mrr, mrr, after.period_start, details))
        if before.status != SubscriptionStatus.PAST_DUE and (
            after.status == SubscriptionStatus.PAST_DUE
        ):
            entries.append((SubscriptionEventKind.PAST_DUE, mrr, mrr, now, {}))
        elif before.status in PROBLEM_STATUSES and after.status == SubscriptionStatus.ACTIVE:
            entries.append((SubscriptionEventKind.RECOVERED, mrr, mrr, now, {}))
        if after.cancel_at_period_end and not before.cancel_at_period_end:
            cancelled_at = data.canceled_at or now
            entries.append((SubscriptionEventKind.CANCELLED, mrr, mrr, cancelled_at, {}))
        elif before.cancel_at_period_end and not after.cancel_at_period_end:
            entries.append((SubscriptionEventKind.REACTIVATED, mrr, mrr, now, {}))
    for kind, mrr_before, mrr_after, occurred_at, details in entries:
        session.add(
            SubscriptionEvent(
                subscription_id=row.id,
                kind=kind,
                occurred_at=occurred_at,
                currency=after.plan.currency,
                mrr_before=mrr_before,
                mrr_after=mrr_after,
                mrr_delta=mrr_after - mrr_before,
                stripe_event_id=event_id,
                details=details,
            )
        )
    if entries:
        session.flush()


def mail_payment_problem(
    session: Session, gateway: StripeGateway, subscription: Subscription, invoice_id: str | None
) -> None:
    """Mail the subscriber that a payment failed (or awaits their 3-D Secure confirmation), with
    the amount and a link to fix the card.

    Sent on the transition, not per Stripe event: when a subscription turns past due or unpaid
    (whichever event or action the mirror learns it from), and when a subscription started by
    ``tick`` at a trial's end could not be paid. Both servers behave alike this way (localstripe
    sends no ``invoice.payment_failed`` for a declined subscription charge), and a reader gets
    one mail per failure, not one per delivery or retry.
    """
    if subscription.group_id is not None:
        from billing.services import groups

        groups.mail_payment_problem(session, gateway, subscription, invoice_id)
        return
    customer = subscription.customer
    reader = customer.reader
    amount, currency, action_required = subscription.plan.amount, subscription.plan.currency, False
    if invoice_id is not None:
        invoice = gateway.retrieve_invoice(invoice_id)
        amount, currency = invoice.amount_due - invoice.amount_paid, invoice.currency
        intent = gateway.invoice_payment_intent(invoice_id)
        action_required = intent is not None and intent.status == "requires_action"
    mail.send(
        session,
        reader.email if reader is not None else customer.email,
        "payment_failed",
        name=reader.name if reader is not None else None,
        amount_due=amount,
        currency=currency,
        action_required=action_required,
        keeps_access=subscription.status == SubscriptionStatus.PAST_DUE,
        card_url=f"{current_app.config['PUBLIC_BASE_URL']}/account/card",
    )


def _first_payment(gateway: StripeGateway, stripe_subscription_id: str) -> datetime | None:
    """When the subscription's first invoice was paid (None: nothing paid yet, or ever)."""
    invoices = gateway.list_invoices(subscription_id=stripe_subscription_id)
    paid = [i for i in invoices if i.amount_paid > 0 and i.status == InvoiceStatus.PAID]
    if not paid:
        return None
    return min(i.paid_at or i.created for i in paid)


def _has_started(session: Session, row: Subscription) -> bool:
    """Whether the ledger holds the subscription's start (its first payment was seen)."""
    started = session.scalar(
        select(SubscriptionEvent.id)
        .where(
            SubscriptionEvent.subscription_id == row.id,
            SubscriptionEvent.kind.in_(
                [SubscriptionEventKind.CREATED, SubscriptionEventKind.CONVERTED]
            ),
        )
        .limit(1)
    )
    return started is not None


def _refund_entry(
    session: Session, invoice: Invoice, refund: Refund, *, now: datetime, event_id: str | None
) -> None:
    """A ``refunded`` ledger entry for a new refund of a subscription's invoice (MRR unchanged)."""
    subscription = session.get_one(Subscription, invoice.subscription_id)
    mrr = subscription.monthly_revenue()
    session.add(
        SubscriptionEvent(
            subscription_id=subscription.id,
            kind=SubscriptionEventKind.REFUNDED,
            occurred_at=refund.created_at,
            currency=subscription.plan.currency,
            mrr_before=mrr,
            mrr_after=mrr,
            mrr_delta=0,
            stripe_event_id=event_id,
            details={
                "refund": refund.stripe_id,
                "invoice": invoice.stripe_id,
                "amount": refund.amount,
                "currency": refund.currency,
            },
        )
    )
    session.flush()


def _sync_invoice(
    session: Session,
    gateway: StripeGateway,
    stripe_invoice_id: str,
    now: datetime,
    event_id: str | None,
    refresh_subscription: bool,
) -> _Synced[Invoice]:
    row = _locked(session, Invoice, stripe_invoice_id)
    try:
        data = gateway.retrieve_invoice(stripe_invoice_id)
    except StripeObjectNotFoundError:
        log.warning("invoice %s does not exist on Stripe; mirror left as is", stripe_invoice_id)
        return _Synced(row, Change.MISSING)
    if not is_ours(data):
        return _Synced(None, Change.UNCHANGED)
    customer = _customer_for(session, gateway, data.customer_id, data.metadata, now)
    subscription = None
    if data.subscription_id:
        subscription = by_stripe_id(session, Subscription, data.subscription_id)
        if subscription is None or refresh_subscription:
            subscription = _sync_subscription(
                session, gateway, data.subscription_id, now, event_id
            ).row
    values = _invoice_values(data, customer, subscription)
    values.update(
        taxes.invoice_tax_values(
            session,
            data,
            customer,
            row,
            publisher_country=taxes.current_settings().publisher_country,
        )
    )
    status_before = row.status if row is not None else None
    synced = _upsert(session, Invoice, data.id, values, row)
    if synced.row is not None:
        notices.after_invoice_sync(session, synced.row, status_before, now=now)
    return synced


def _invoice_values(
    data: StripeInvoiceData, customer: Customer, subscription: Subscription | None
) -> dict[str, Any]:
    return {
        "number": data.number,
        "customer_id": customer.id,
        "subscription_id": subscription.id if subscription is not None else None,
        "status": InvoiceStatus(data.status),
        "currency": data.currency,
        "subtotal": data.subtotal,
        "tax": data.tax,
        "total": data.total,
        "amount_paid": data.amount_paid,
        "customer_country": data.customer_country,
        "customer_vat_id": data.customer_vat_id,
        "created_at": data.created,
        "paid_at": data.paid_at,
        "hosted_invoice_url": data.hosted_invoice_url,
        "invoice_pdf_url": data.invoice_pdf_url,
    }


# --- customers and cards (shared with self-service) ---------------------------------------------


def customer_of(session: Session, reader: Reader) -> Customer | None:
    """The reader's customer in the mirror (perhaps deleted on Stripe), or None.

    Shared with :mod:`billing.services.payments`, which creates the customer when there is none.
    """
    return session.scalar(select(Customer).where(Customer.reader_id == reader.id))


def card_label(card: CardData) -> str:
    """What the account page names a payment method by: the card brand, or ``sepa_debit``."""
    return card.brand or card.type
