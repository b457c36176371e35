"""Payments: the reader's subscription by card, self-service, and the mirror of Stripe.

Stripe is the source of truth for money; this module keeps our mirror of it (customers,
subscriptions, invoices, refunds, disputes and the :class:`SubscriptionEvent` ledger) and offers the
reader's self-service actions. Pages, the CLI and the webhook handlers call only the functions
below. Every function takes the session (and the gateway and ``now`` where it needs them) and
never commits.

**Self-service.** A reader saves a card (:func:`card_setup`, Stripe.js, :func:`save_card`), then
:func:`subscribe`:

- during their free trial nothing is charged: a :class:`ScheduledSubscription` is recorded for the
  trial's end, and ``flask billing tick`` starts it then (:func:`start_due_subscriptions`,
  :func:`start_scheduled`), converting the trial. The same happens on real Stripe and localstripe.
- otherwise the Stripe subscription is created at once and the first period charged; a trial that
  has expired stays expired.

A payment that fails while the reader is present (first payment, a switch of plan, a retry) raises
:class:`PaymentFailed` *after* mirroring what Stripe did, so the page may commit it and show the
message; a payment that needs 3-D Secure returns the PaymentIntent's client secret instead.

**The mirror.** ``sync_*`` re-fetch an object from Stripe and upsert it. They take the mirror row's
lock (``SELECT ... FOR UPDATE``; a no-op on SQLite, where the webhook's claim already serialises
writers) *before* fetching, so whatever order events arrive in, the last writer writes the newest
truth. Locks are always taken in one order (dispute, invoice, subscription, customer, refund), so
concurrent handlers wait for each other instead of deadlocking; the reader's own actions lock the
reader first and then go through the same ``sync_*`` code. Objects that are not
ours (:func:`billing.gateway.is_ours`) are ignored (``None``). An object of ours that cannot be tied
to a reader, group or plan yet raises :class:`UnlinkedObject`, so its event is retried, never
dropped. An object Stripe says does not exist is not retried forever: a customer is marked
deleted; a subscription, invoice or dispute keeps its last mirrored state (``flask billing
reconcile`` reports it), and the call returns that row (or ``None``).

**The ledger.** Every upsert of a subscription compares the mirror before and after and appends
the :class:`SubscriptionEvent` rows for what changed (see :func:`_ledger`); an upsert that changes
nothing appends nothing, so the same event handled any number of times has one effect.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Generic, TypeVar

from flask import current_app
from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from billing.errors import Conflict, DomainError, NotFound, ValidationFailed
from billing.gateway import (
    CardData,
    GatewayError,
    GatewayUnavailableError,
    PaymentDeclinedError,
    SetupIntentSecret,
    StripeCustomerData,
    StripeGateway,
    StripeInvoiceData,
    StripeObjectNotFoundError,
    StripePriceData,
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
    PlanKind,
    Reader,
    Refund,
    ScheduledSubscription,
    Subscription,
    SubscriptionEvent,
    SubscriptionEventKind,
    SubscriptionStatus,
    Trial,
    TrialStatus,
)
from billing.models.enums import BillingInterval
from billing.models.payments import ENDED_STATUSES
from billing.services import audit, mail
from billing.services.accounts import by_public_id, canonical_email
from billing.services.trials import EmailNotVerified

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


# --- errors -------------------------------------------------------------------------------------


class PaymentFailed(DomainError):
    """A payment or card was refused (declined, authentication failed); the message is for people."""

    status = 402
    code = "payment_failed"


class NothingToManage(Conflict):
    """The reader has no running subscription (or scheduled start) to act on."""

    code = "no_subscription"


class AlreadySubscribed(Conflict):
    """The reader already has a subscription running or scheduled."""

    code = "already_subscribed"


class CardRequired(Conflict):
    """Subscribing needs a saved card first."""

    code = "card_required"


class PaymentServiceUnavailable(DomainError):
    """Stripe could not be reached; nothing was changed, trying again later may work."""

    status = 503
    code = "payment_service_unavailable"


class UnlinkedObject(Exception):
    """A Stripe object of ours cannot be tied to a reader, group or plan yet: retry later."""


# --- what the pages get -------------------------------------------------------------------------


@dataclass(frozen=True)
class SubscribeOutcome:
    """What :func:`subscribe` did: a subscription now, or one scheduled at the trial's end."""

    subscription: Subscription | None
    scheduled: ScheduledSubscription | None
    first_charge_at: datetime
    amount: int
    currency: str
    action_client_secret: str | None


@dataclass(frozen=True)
class BillingOverview:
    """The reader's subscription as the account page shows it (read from the mirror only).

    ``status`` is Stripe's status string, ``"scheduled"`` for a start at the trial's end, or None.
    ``next_charge_at``/``next_amount`` are the next automatic charge (none while cancelled or
    failing); ``access_until`` is the end of the paid period while it is active or cancelled.
    """

    subscription: Subscription | None
    scheduled: ScheduledSubscription | None
    plan: Plan | None
    status: str | None
    next_charge_at: datetime | None
    next_amount: int | None
    currency: str | None
    card_brand: str | None
    card_last4: str | None
    cancel_at_period_end: bool
    access_until: datetime | None
    payment_problem: bool


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


# --- plans --------------------------------------------------------------------------------------


def reader_plans(session: Session) -> list[Plan]:
    """The individual plans a reader can buy (active, on sale in Stripe), monthly first."""
    plans = session.scalars(
        select(Plan).where(
            Plan.kind == PlanKind.INDIVIDUAL,
            Plan.active.is_(True),
            Plan.stripe_price_id.is_not(None),
        )
    ).all()
    return sorted(plans, key=lambda p: (p.interval != BillingInterval.MONTH, p.amount, p.code))


def sync_plans(session: Session, gateway: StripeGateway) -> list[tuple[Plan, Change]]:
    """Put every active plan on sale in Stripe and store its product and price ids.

    One product per plan kind (individual, group). A plan whose stored price still has its terms
    (amount, currency, interval) is left alone; otherwise a price of ours with those terms is
    reused, or a new one created. Older prices are never deactivated: subscriptions on them go
    on, and the mirror still knows their plan from the price's ``tollgate_plan``.
    """
    plans = session.scalars(select(Plan).where(Plan.active.is_(True)).order_by(Plan.id)).all()
    if not plans:
        return []
    ours = [price for price in gateway.list_prices(active_only=True) if is_ours(price)]
    products: dict[PlanKind, str] = {}
    results: list[tuple[Plan, Change]] = []
    for plan in plans:
        current = _stored_price(gateway, plan.stripe_price_id)
        if current is not None and _same_terms(current, plan):
            change = Change.UNCHANGED
            price = current
        else:
            change = Change.CREATED if plan.stripe_price_id is None else Change.UPDATED
            price = next(
                (
                    p
                    for p in ours
                    if p.metadata.get("tollgate_plan") == plan.code and _same_terms(p, plan)
                ),
                None,
            ) or gateway.create_price(
                _product_for(session, gateway, plan, products),
                amount=plan.amount,
                currency=plan.currency,
                interval="month" if plan.interval == BillingInterval.MONTH else "year",
                plan_code=plan.code,
                nickname=plan.name,
            )
        products.setdefault(plan.kind, price.product_id)
        linked = _assign(plan, {"stripe_price_id": price.id, "stripe_product_id": price.product_id})
        if linked and change == Change.UNCHANGED:
            change = Change.UPDATED
        results.append((plan, change))
    session.flush()
    return results


def _stored_price(gateway: StripeGateway, price_id: str | None) -> StripePriceData | None:
    if price_id is None:
        return None
    try:
        return gateway.retrieve_price(price_id)
    except StripeObjectNotFoundError:
        return None


def _same_terms(price: StripePriceData, plan: Plan) -> bool:
    return price.active and (
        price.amount,
        price.currency,
        price.interval,
        price.interval_count,
    ) == (plan.amount, plan.currency.lower(), str(plan.interval), 1)


def _product_for(
    session: Session, gateway: StripeGateway, plan: Plan, products: dict[PlanKind, str]
) -> str:
    """The Stripe product of the plan's kind: known already, stored on a plan, or created."""
    if plan.kind in products:
        return products[plan.kind]
    stored = session.scalars(
        select(Plan.stripe_product_id).where(
            Plan.kind == plan.kind, Plan.stripe_product_id.is_not(None)
        )
    ).all()
    for product_id in stored:
        assert product_id is not None
        try:
            if gateway.retrieve_product(product_id).active:
                products[plan.kind] = product_id
                return product_id
        except StripeObjectNotFoundError:
            continue
    name = "Group subscription" if plan.kind == PlanKind.GROUP else "Digital subscription"
    product = gateway.create_product(name, metadata={"tollgate_plan_kind": str(plan.kind)})
    products[plan.kind] = product.id
    return product.id


def _sellable_plan(session: Session, plan_code: str) -> Plan:
    plan = next((p for p in reader_plans(session) if p.code == plan_code), None)
    if plan is None:
        raise ValidationFailed("Choose one of the plans on offer.", field="plan")
    return plan


# --- self-service -------------------------------------------------------------------------------


def card_setup(
    session: Session, gateway: StripeGateway, reader: Reader, *, now: datetime
) -> SetupIntentSecret:
    """Start saving a card: ensure the reader's Stripe customer, return a SetupIntent's secret."""
    _lock_reader(session, reader)
    _require_verified(reader)
    customer = _ensure_customer(session, gateway, reader, now=now)
    with _talking_to_stripe():
        return gateway.create_setup_intent(customer.stripe_id)


def save_card(
    session: Session,
    gateway: StripeGateway,
    reader: Reader,
    payment_method_id: str,
    *,
    now: datetime,
) -> CardData:
    """Make the payment method Stripe.js saved the reader's default card; mirror brand and last 4.

    Raises :class:`PaymentFailed` when the card is refused, :class:`ValidationFailed` (field
    ``card``) when the payment method is unknown or someone else's.
    """
    _lock_reader(session, reader)
    _require_verified(reader)
    payment_method_id = payment_method_id.strip()
    if not payment_method_id:
        raise ValidationFailed("Enter your card details.", field="card")
    customer = _ensure_customer(session, gateway, reader, now=now)
    try:
        with _talking_to_stripe():
            card = gateway.attach_default_payment_method(customer.stripe_id, payment_method_id)
    except GatewayError as exc:  # declined and unreachable were turned into errors for people
        raise ValidationFailed(f"This card cannot be used: {exc.message}", field="card") from exc
    _mirror_card(customer, card)
    audit.record(
        session,
        now=now,
        actor=reader,
        action="subscription.card_saved",
        target=_running_subscription(session, reader, now) or customer,
        details={"type": card.type, "brand": card.brand, "last4": card.last4},
    )
    return card


def subscribe(
    session: Session, gateway: StripeGateway, reader: Reader, plan_code: str, *, now: datetime
) -> SubscribeOutcome:
    """Subscribe the reader to ``plan_code`` with their saved card.

    Needs a verified e-mail, a saved card and nothing running or scheduled. During a running free
    trial nothing is charged: the start is scheduled at the trial's end. Otherwise the
    subscription starts now; if the bank wants 3-D Secure the outcome carries the client secret,
    and a declined first payment raises :class:`PaymentFailed` after mirroring the (incomplete)
    subscription, which the reader completes with another card and :func:`retry_payment`.
    """
    _lock_reader(session, reader)
    _require_verified(reader)
    plan = _sellable_plan(session, plan_code)
    if _running_subscription(session, reader, now) or _pending_schedule(session, reader):
        raise AlreadySubscribed("You already have a subscription.")
    customer = _customer_of(session, reader)
    if (
        customer is None
        or customer.deleted_at is not None
        or not customer.default_payment_method_id
    ):
        raise CardRequired("Add a card first.", field="card")
    assert plan.stripe_price_id is not None

    trial = reader.trial
    if trial is not None and trial.is_active(now):
        scheduled = ScheduledSubscription(
            reader_id=reader.id,
            customer=customer,
            plan=plan,
            starts_at=trial.ends_at,
            created_at=now,
        )
        session.add(scheduled)
        session.flush()
        audit.record(
            session,
            now=now,
            actor=reader,
            action="subscription.scheduled",
            target=reader,
            details={"plan": plan.code, "starts_at": trial.ends_at.isoformat()},
        )
        return SubscribeOutcome(None, scheduled, trial.ends_at, plan.amount, plan.currency, None)

    attempt = session.scalar(
        select(func.count(Subscription.id)).where(Subscription.customer_id == customer.id)
    )
    with _talking_to_stripe():
        created = gateway.create_subscription(
            customer.stripe_id,
            plan.stripe_price_id,
            metadata={"tollgate_reader_id": reader.public_id, "tollgate_plan": plan.code},
            idempotency_key=f"tollgate-subscribe-{customer.stripe_id}-{attempt}-{plan.code}",
        )
        subscription = _sync_after_change(session, gateway, created, now=now)
    audit.record(
        session,
        now=now,
        actor=reader,
        action="subscription.created",
        target=subscription,
        details={"plan": plan.code, "status": str(subscription.status)},
    )
    secret = _payment_outcome(gateway, created.latest_invoice_id, subscription)
    return SubscribeOutcome(subscription, None, now, plan.amount, plan.currency, secret)


def overview(session: Session, reader: Reader, *, now: datetime) -> BillingOverview:
    """The reader's subscription, scheduled start, card and next charge, from the mirror alone."""
    subscriptions = _subscriptions_of(session, reader)
    running = next((s for s in subscriptions if not s.has_ended(now)), None)
    subscription = running or (subscriptions[0] if subscriptions else None)
    scheduled = _pending_schedule(session, reader)
    customer = _customer_of(session, reader)
    plan = subscription.plan if subscription is not None else None
    status: str | None = str(subscription.status) if subscription is not None else None
    next_charge_at: datetime | None = None
    access_until: datetime | None = None
    if running is None and scheduled is not None:
        plan, status, next_charge_at = scheduled.plan, "scheduled", scheduled.starts_at
    elif running is not None:
        if running.status == SubscriptionStatus.ACTIVE and not running.cancel_at_period_end:
            next_charge_at = running.current_period_end
        if running.is_active(now) or running.is_on_grace_period(now):
            access_until = running.current_period_end
    quantity = running.quantity if running is not None else 1
    return BillingOverview(
        subscription=subscription,
        scheduled=scheduled,
        plan=plan,
        status=status,
        next_charge_at=next_charge_at,
        next_amount=plan.amount * quantity if plan is not None and next_charge_at else None,
        currency=plan.currency if plan is not None else None,
        card_brand=customer.card_brand if customer is not None else None,
        card_last4=customer.card_last4 if customer is not None else None,
        cancel_at_period_end=bool(running is not None and running.cancel_at_period_end),
        access_until=access_until,
        payment_problem=running is not None and running.status in PROBLEM_STATUSES,
    )


def cancel_at_period_end(
    session: Session, gateway: StripeGateway, reader: Reader, *, now: datetime
) -> Subscription:
    """Stop the subscription at the end of the paid period (access continues until then).

    Already cancelling: nothing changes. A subscription whose first payment never went through
    (``incomplete``) has no paid period, so it ends at once.
    """
    _lock_reader(session, reader)
    subscription = _manageable(session, reader, now)
    if subscription.cancel_at_period_end:
        return subscription
    if subscription.status == SubscriptionStatus.INCOMPLETE:
        return cancel_now(session, gateway, reader, now=now)
    with _talking_to_stripe():
        gateway.cancel_at_period_end(subscription.stripe_id)
        subscription = _resync(session, gateway, subscription.stripe_id, now=now)
    _audit(session, reader, "cancelled", subscription, now)
    return subscription


def resume(
    session: Session, gateway: StripeGateway, reader: Reader, *, now: datetime
) -> Subscription:
    """Take back a cancellation at period end: the subscription renews again."""
    _lock_reader(session, reader)
    subscription = _manageable(session, reader, now)
    if not subscription.cancel_at_period_end:
        return subscription
    with _talking_to_stripe():
        gateway.resume(subscription.stripe_id)
        subscription = _resync(session, gateway, subscription.stripe_id, now=now)
    _audit(session, reader, "resumed", subscription, now)
    return subscription


def switch_plan(
    session: Session, gateway: StripeGateway, reader: Reader, plan_code: str, *, now: datetime
) -> Subscription | ScheduledSubscription:
    """Move the reader to another individual plan (monthly <-> yearly).

    A scheduled start just changes its plan. A running subscription changes its price on Stripe,
    which invoices the difference at once; if that payment fails the change is mirrored (the
    subscription is then ``past_due``) and :class:`PaymentFailed` is raised.
    """
    _lock_reader(session, reader)
    plan = _sellable_plan(session, plan_code)
    assert plan.stripe_price_id is not None
    scheduled = _pending_schedule(session, reader)
    if scheduled is not None and _running_subscription(session, reader, now) is None:
        if scheduled.plan_id != plan.id:
            before = scheduled.plan.code
            scheduled.plan = plan
            audit.record(
                session,
                now=now,
                actor=reader,
                action="subscription.switched",
                target=reader,
                details={"scheduled": scheduled.id, "from": before, "to": plan.code},
            )
        return scheduled
    subscription = _manageable(session, reader, now)
    if subscription.plan_id == plan.id:
        return subscription
    if subscription.status == SubscriptionStatus.INCOMPLETE:
        raise Conflict(
            "Your first payment has not gone through yet: update your card first.",
            field="card",
        )
    before = subscription.plan.code
    with _talking_to_stripe():
        changed = gateway.change_price(subscription.stripe_id, plan.stripe_price_id)
        subscription = _sync_after_change(session, gateway, changed, now=now)
    audit.record(
        session,
        now=now,
        actor=reader,
        action="subscription.switched",
        target=subscription,
        details={"from": before, "to": plan.code, "status": str(subscription.status)},
    )
    secret = _payment_outcome(gateway, changed.latest_invoice_id, subscription)
    if secret is not None:
        raise PaymentFailed(
            "Your bank asks you to confirm this payment: update your card to confirm it.",
            field="card",
        )
    return subscription


def cancel_now(
    session: Session, gateway: StripeGateway, reader: Reader, *, now: datetime
) -> Subscription:
    """End the subscription immediately (no refund); access stops now."""
    _lock_reader(session, reader)
    subscription = _manageable(session, reader, now)
    with _talking_to_stripe():
        gateway.cancel_now(subscription.stripe_id)
        subscription = _resync(session, gateway, subscription.stripe_id, now=now)
    _audit(session, reader, "ended", subscription, now)
    return subscription


def cancel_scheduled(session: Session, reader: Reader, *, now: datetime) -> None:
    """Call off the start scheduled at the trial's end; nothing is charged, the card stays saved."""
    _lock_reader(session, reader)
    scheduled = _pending_schedule(session, reader)
    if scheduled is None:
        raise NothingToManage("You have no subscription waiting to start.")
    audit.record(
        session,
        now=now,
        actor=reader,
        action="subscription.schedule_cancelled",
        target=reader,
        details={"plan": scheduled.plan.code, "starts_at": scheduled.starts_at.isoformat()},
    )
    session.delete(scheduled)
    session.flush()


def retry_payment(
    session: Session, gateway: StripeGateway, reader: Reader, *, now: datetime
) -> str | None:
    """Pay the failing subscription's open invoices with the (new) default card, oldest first.

    Returns a PaymentIntent client secret when the bank wants 3-D Secure, None when paid (or
    nothing was open). Raises :class:`PaymentFailed` when the card is declined again, after
    mirroring the outcome.
    """
    _lock_reader(session, reader)
    subscription = _running_subscription(session, reader, now)
    if subscription is None or subscription.status not in PROBLEM_STATUSES:
        raise NothingToManage("No payment is waiting to be made.")
    secret: str | None = None
    try:
        with _talking_to_stripe():
            open_invoices = [
                invoice
                for invoice in gateway.list_invoices(subscription_id=subscription.stripe_id)
                if invoice.status == InvoiceStatus.OPEN
            ]
            for invoice in reversed(open_invoices):
                paid = gateway.pay_invoice(invoice.id).status == InvoiceStatus.PAID
                sync_invoice(session, gateway, invoice.id, now=now)
                if not paid:
                    secret = _payment_outcome(gateway, invoice.id, subscription)
                    break
            if not open_invoices:
                _resync(session, gateway, subscription.stripe_id, now=now)
    finally:
        _audit(session, reader, "payment_retried", subscription, now)
    return secret


def invoices_for(
    session: Session, reader: Reader, *, page: int, per_page: int = 20
) -> tuple[list[Invoice], int]:
    """The reader's invoices (drafts left out), newest first: one page (from 1) and the total."""
    mine = (
        select(Invoice)
        .join(Customer, Invoice.customer_id == Customer.id)
        .outerjoin(Subscription, Invoice.subscription_id == Subscription.id)
        .where(
            or_(Customer.reader_id == reader.id, Subscription.reader_id == reader.id),
            Invoice.status != InvoiceStatus.DRAFT,
        )
    )
    total = session.scalar(select(func.count()).select_from(mine.subquery())) or 0
    rows = session.scalars(
        mine.order_by(Invoice.created_at.desc(), Invoice.id.desc())
        .offset(max(page - 1, 0) * per_page)
        .limit(per_page)
    ).all()
    return list(rows), total


# --- scheduled starts ---------------------------------------------------------------------------


def start_due_subscriptions(
    session: Session, gateway: StripeGateway, *, now: datetime
) -> list[int]:
    """Ids of the scheduled subscriptions due at ``now`` and not started yet, oldest due first.

    Start each with :func:`start_scheduled`, in its own transaction (``flask billing tick`` does);
    listing calls nothing on Stripe.
    """
    return list(
        session.scalars(
            select(ScheduledSubscription.id)
            .where(
                ScheduledSubscription.started_at.is_(None),
                ScheduledSubscription.starts_at <= now,
            )
            .order_by(ScheduledSubscription.starts_at, ScheduledSubscription.id)
        )
    )


def record_start_failure(session: Session, scheduled_id: int, error: str) -> None:
    """After a failed :func:`start_scheduled` was rolled back: count the attempt, keep the error."""
    scheduled = session.get(ScheduledSubscription, scheduled_id)
    if scheduled is not None:
        scheduled.attempts += 1
        scheduled.last_error = error[:1000]
        session.flush()


def trials_awaiting_start(session: Session) -> set[int]:
    """Ids of trials whose reader subscribed during them (a start is scheduled at their end):
    they get no "subscribe now" reminder or "trial ended" mail."""
    return set(
        session.scalars(
            select(Trial.id).join(
                ScheduledSubscription,
                (ScheduledSubscription.reader_id == Trial.reader_id)
                & ScheduledSubscription.started_at.is_(None),
            )
        )
    )


def start_scheduled(
    session: Session, gateway: StripeGateway, scheduled_id: int, *, now: datetime
) -> Subscription:
    """Create the Stripe subscription of a due scheduled start and convert the reader's trial.

    Once only: a started row returns its subscription; the Stripe call carries an idempotency key
    from the row's id, and a subscription already created for it (a run that failed before
    committing) is found by its ``tollgate_scheduled_id`` metadata instead of created again.
    """
    scheduled = session.scalar(
        select(ScheduledSubscription)
        .where(ScheduledSubscription.id == scheduled_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if scheduled is None:
        raise NotFound(f"No scheduled subscription {scheduled_id}.")
    if scheduled.started_at is not None and scheduled.subscription_id is not None:
        return session.get_one(Subscription, scheduled.subscription_id)
    if scheduled.starts_at > now:
        raise Conflict(f"Scheduled subscription {scheduled_id} starts at {scheduled.starts_at}.")
    reader = session.get(Reader, scheduled.reader_id) if scheduled.reader_id else None
    plan, customer = scheduled.plan, scheduled.customer
    if reader is None or plan.stripe_price_id is None:
        raise UnlinkedObject(f"Scheduled subscription {scheduled_id} has no reader or no price.")
    tag = str(scheduled.id)
    found = [
        s
        for s in gateway.list_subscriptions(customer_id=customer.stripe_id)
        if s.metadata.get("tollgate_scheduled_id") == tag and is_ours(s)
    ]
    created = found[0] if found else None
    if created is None:
        created = gateway.create_subscription(
            customer.stripe_id,
            plan.stripe_price_id,
            metadata={
                "tollgate_reader_id": reader.public_id,
                "tollgate_plan": plan.code,
                "tollgate_scheduled_id": tag,
            },
            idempotency_key=f"tollgate-scheduled-{scheduled.id}",
        )
    subscription = _sync_after_change(session, gateway, created, now=now)
    if subscription.status == SubscriptionStatus.INCOMPLETE:
        _mail_payment_problem(session, gateway, subscription, created.latest_invoice_id)
    scheduled.started_at = now
    scheduled.subscription_id = subscription.id
    scheduled.last_error = None
    trial = reader.trial
    if trial is not None and trial.status != TrialStatus.CONVERTED:
        trial.status = TrialStatus.CONVERTED
        trial.converted_at = now
    audit.record(
        session,
        now=now,
        actor="cli",
        action="subscription.started",
        target=subscription,
        details={"scheduled": scheduled.id, "plan": plan.code, "status": str(subscription.status)},
    )
    session.flush()
    return subscription


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
    for data in gateway.list_refunds(stripe_charge_id):
        values: dict[str, Any] = {
            "invoice_id": invoice.id if invoice is not None else None,
            "stripe_charge_id": stripe_charge_id,
            "amount": data.amount,
            "currency": data.currency,
            "status": data.status,
            "reason": data.reason,
            "created_at": data.created,
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


def _by_stripe_id(session: Session, model: type[_Row], stripe_id: str) -> _Row | None:
    return session.scalar(select(model).where(model.stripe_id == stripe_id))


def _assign(row: Any, values: Mapping[str, Any]) -> bool:
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
        changed = _assign(row, values)
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
    values: dict[str, Any] = {"default_payment_method_id": data.default_payment_method_id}
    if row is None:
        values.update(_new_customer_values(session, data, {**(hints or {}), **data.metadata}))
        values["created_at"] = data.created or now
    else:
        values.update(email=data.email or row.email, country=data.country or row.country)
    if row is None or row.default_payment_method_id != data.default_payment_method_id:
        card = gateway.default_card(data.id) if data.default_payment_method_id else None
        values.update(
            card_brand=_card_label(card) if card else None,
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
        linked = _customer_of(session, reader) is None
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
    customer = _by_stripe_id(session, Customer, stripe_customer_id)
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
            _mail_payment_problem(session, gateway, row, data.latest_invoice_id)
        return _Synced(row, Change.CREATED)
    before = _State.of(row)
    if status == SubscriptionStatus.PAST_DUE:
        values["past_due_since"] = row.past_due_since or now
    elif status != SubscriptionStatus.UNPAID:
        values["past_due_since"] = None
    if not _assign(row, values):
        return _Synced(row, Change.UNCHANGED)
    row.updated_at = now
    if event_id is not None:
        row.last_stripe_event_id = event_id
    session.flush()
    _ledger(session, gateway, row, before, _State.of(row), data, now=now, event_id=event_id)
    if status in DUNNING_STATUSES and before.status not in DUNNING_STATUSES:
        _mail_payment_problem(session, gateway, row, data.latest_invoice_id)
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

    - Nothing for a subscription that has not started (``incomplete``, ``trialing``) or had
      already ended.
    - Its start (first sight, or leaving ``incomplete``/``trialing``): ``created``, or
      ``converted`` when it started from a trial (a scheduled start, or Stripe's own trial), at
      Stripe's creation time, MRR 0 -> the plan's monthly amount. Seen for the first time already
      ended, it gets its start and ``ended`` if Stripe shows a payment of it, else nothing.
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
    if before is None or before.status in NOT_STARTED_STATUSES:
        if after.status in NOT_STARTED_STATUSES:
            return
        if ended and not _was_paid(gateway, data.id):
            return
        full = after.plan.monthly_amount(after.quantity)
        converted = bool(data.metadata.get("tollgate_scheduled_id")) or (
            before is not None and before.status == SubscriptionStatus.TRIALING
        )
        kind = SubscriptionEventKind.CONVERTED if converted else SubscriptionEventKind.CREATED
        details = {"plan": code, "quantity": after.quantity}
        entries.append((kind, 0, full, data.created, details))
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


def _mail_payment_problem(
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


def _was_paid(gateway: StripeGateway, stripe_subscription_id: str) -> bool:
    """Whether any invoice of the subscription was paid (so it did start before it ended)."""
    invoices = gateway.list_invoices(subscription_id=stripe_subscription_id)
    return any(invoice.amount_paid > 0 for invoice in invoices)


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
        subscription = _by_stripe_id(session, Subscription, data.subscription_id)
        if subscription is None or refresh_subscription:
            subscription = _sync_subscription(
                session, gateway, data.subscription_id, now, event_id
            ).row
    values = _invoice_values(data, customer, subscription)
    return _upsert(session, Invoice, data.id, values, row)


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


def _sync_after_change(
    session: Session, gateway: StripeGateway, changed: StripeSubscriptionData, *, now: datetime
) -> Subscription:
    """After we changed a subscription on Stripe: mirror its newest invoice and itself."""
    if changed.latest_invoice_id:
        _sync_invoice(session, gateway, changed.latest_invoice_id, now, None, True)
        subscription = _by_stripe_id(session, Subscription, changed.id)
        if subscription is not None:
            return subscription
    return _resync(session, gateway, changed.id, now=now)


def _resync(
    session: Session, gateway: StripeGateway, stripe_subscription_id: str, *, now: datetime
) -> Subscription:
    subscription = sync_subscription(session, gateway, stripe_subscription_id, now=now)
    if subscription is None:
        raise UnlinkedObject(f"Subscription {stripe_subscription_id} is not ours.")
    return subscription


def _payment_outcome(
    gateway: StripeGateway, invoice_id: str | None, subscription: Subscription
) -> str | None:
    """After a charge the reader is waiting for: None if nothing is wrong, the client secret if
    the bank wants 3-D Secure; raises :class:`PaymentFailed` if it was declined."""
    if invoice_id is None or subscription.status not in PROBLEM_STATUSES:
        return None
    with _talking_to_stripe():
        intent = gateway.invoice_payment_intent(invoice_id)
    if intent is None or intent.status == "succeeded":
        return None
    if intent.status == "requires_action" and intent.client_secret:
        return intent.client_secret
    message = intent.last_error_message or "Your card was declined."
    raise PaymentFailed(f"{message} Please use another card.", field="card")


# --- readers, customers, cards ------------------------------------------------------------------


def _lock_reader(session: Session, reader: Reader) -> None:
    """Serialise one reader's payment actions (a double click subscribes once, on PostgreSQL)."""
    session.execute(select(Reader.id).where(Reader.id == reader.id).with_for_update())


def _require_verified(reader: Reader) -> None:
    if not reader.is_verified:
        raise EmailNotVerified("Please verify your e-mail address first: we sent you a link.")


def _customer_of(session: Session, reader: Reader) -> Customer | None:
    return session.scalar(select(Customer).where(Customer.reader_id == reader.id))


def _ensure_customer(
    session: Session, gateway: StripeGateway, reader: Reader, *, now: datetime
) -> Customer:
    """The reader's Stripe customer, created (tagged with their public id) when they have none.

    A customer deleted on Stripe stays in the mirror for history, unlinked; a new one is created.
    """
    customer = _customer_of(session, reader)
    if customer is not None and customer.deleted_at is None:
        return customer
    previous = customer.stripe_id if customer is not None else "first"
    if customer is not None:
        customer.reader = None
        session.flush()
    with _talking_to_stripe():
        data = gateway.create_customer(
            reader.email,
            name=reader.name,
            country=reader.country,
            metadata={"tollgate_reader_id": reader.public_id},
            idempotency_key=f"tollgate-customer-{reader.public_id}-{previous}",
        )
    customer = Customer(
        stripe_id=data.id,
        reader=reader,
        email=reader.email,
        email_canonical=reader.email_canonical,
        country=reader.country,
        created_at=now,
    )
    session.add(customer)
    session.flush()
    return customer


def _card_label(card: CardData) -> str:
    """What the account page names a payment method by: the card brand, or ``sepa_debit``."""
    return card.brand or card.type


def _mirror_card(customer: Customer, card: CardData) -> None:
    _assign(
        customer,
        {
            "card_brand": _card_label(card),
            "card_last4": card.last4,
            "default_payment_method_id": card.payment_method_id,
        },
    )


# --- the reader's subscriptions -----------------------------------------------------------------


def _subscriptions_of(session: Session, reader: Reader) -> list[Subscription]:
    """The reader's individual subscriptions, newest first."""
    return list(
        session.scalars(
            select(Subscription)
            .where(Subscription.reader_id == reader.id)
            .order_by(Subscription.created_at.desc(), Subscription.id.desc())
        )
    )


def _running_subscription(session: Session, reader: Reader, now: datetime) -> Subscription | None:
    """The reader's newest subscription that has not ended (whatever its payment state)."""
    return next((s for s in _subscriptions_of(session, reader) if not s.has_ended(now)), None)


def _manageable(session: Session, reader: Reader, now: datetime) -> Subscription:
    subscription = _running_subscription(session, reader, now)
    if subscription is None:
        raise NothingToManage("You have no running subscription.")
    return subscription


def _pending_schedule(session: Session, reader: Reader) -> ScheduledSubscription | None:
    return session.scalar(
        select(ScheduledSubscription).where(
            ScheduledSubscription.reader_id == reader.id,
            ScheduledSubscription.started_at.is_(None),
        )
    )


def _audit(
    session: Session, reader: Reader, verb: str, subscription: Subscription, now: datetime
) -> None:
    audit.record(
        session,
        now=now,
        actor=reader,
        action=f"subscription.{verb}",
        target=subscription,
        details={"plan": subscription.plan.code, "status": str(subscription.status)},
    )


@contextmanager
def _talking_to_stripe() -> Iterator[None]:
    """Turn the gateway's refusals into errors for people: declined cards, Stripe unreachable."""
    try:
        yield
    except PaymentDeclinedError as exc:
        raise PaymentFailed(exc.message, field="card") from exc
    except GatewayUnavailableError as exc:
        raise PaymentServiceUnavailable(
            "We cannot reach our payment provider right now. Nothing was charged; "
            "please try again in a few minutes."
        ) from exc
