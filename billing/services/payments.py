"""Payments: the reader's subscription by card and self-service.

Stripe is the source of truth for money; :mod:`billing.services.stripe_mirror` keeps our mirror of
it (customers, subscriptions, invoices, refunds, disputes and the ledger) and this module offers
the reader's self-service actions on top of it. Pages and the CLI call only the functions below
(the webhook handlers and reconcile call the mirror). Every function takes the session (and the
gateway and ``now`` where it needs them) and never commits.

**Self-service.** A reader saves a card (:func:`card_setup`, Stripe.js, :func:`save_card`), then
:func:`subscribe`:

- during their free trial nothing is charged: a :class:`ScheduledSubscription` is recorded for the
  trial's end, and ``flask billing tick`` starts it then (:func:`start_due_subscriptions`,
  :func:`start_scheduled`), converting the trial. The same happens on real Stripe and localstripe.
- otherwise the Stripe subscription is created at once and the first period charged; a trial that
  has expired stays expired.

A payment that fails while the reader is present (first payment, a switch of plan, a retry) raises
:class:`PaymentFailed` *after* mirroring what Stripe did, so the page may commit it and show the
message; a payment that needs 3-D Secure returns the PaymentIntent's client secret instead. Each
action locks the reader first, then mirrors what it changed on Stripe through the mirror's
``sync_*`` (whose ordering rules :mod:`billing.services.stripe_mirror` states).
"""

from __future__ import annotations

import calendar
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from billing.errors import Conflict, DomainError, NotFound, ValidationFailed
from billing.gateway import (
    CardData,
    GatewayError,
    GatewayUnavailableError,
    PaymentDeclinedError,
    SetupIntentSecret,
    StripeGateway,
    StripeObjectNotFoundError,
    StripePriceData,
    StripeSubscriptionData,
    is_ours,
)
from billing.models import (
    Customer,
    Invoice,
    InvoiceStatus,
    Plan,
    PlanKind,
    Reader,
    ScheduledSubscription,
    Subscription,
    SubscriptionStatus,
    Trial,
    TrialStatus,
)
from billing.models.enums import BillingInterval
from billing.services import audit, notices, taxes
from billing.services.stripe_mirror import (
    PROBLEM_STATUSES,
    Change,
    UnlinkedObject,
    assign,
    by_stripe_id,
    card_label,
    customer_of,
    mail_payment_problem,
    sync_customer,
    sync_invoice,
    sync_subscription,
)
from billing.services.trials import EmailNotVerified

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


class PreviewExpired(Conflict):
    """The switch preview the reader confirmed is too old (or not one we made): preview again."""

    code = "preview_expired"


class PaymentServiceUnavailable(DomainError):
    """Stripe could not be reached; nothing was changed, trying again later may work."""

    status = 503
    code = "payment_service_unavailable"


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
    credit: int = 0
    """The reader's credit on Stripe (minor units), which pays the next charges first;
    ``next_amount`` is what is left to charge after it."""


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


def group_plans(session: Session) -> list[Plan]:
    """The per-seat plans organisations can buy (active, on sale in Stripe), cheapest first."""
    plans = session.scalars(
        select(Plan).where(
            Plan.kind == PlanKind.GROUP,
            Plan.active.is_(True),
            Plan.stripe_price_id.is_not(None),
        )
    ).all()
    return sorted(plans, key=lambda p: (p.amount, p.code))


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
        linked = assign(plan, {"stripe_price_id": price.id, "stripe_product_id": price.product_id})
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
    with talking_to_stripe():
        return gateway.create_setup_intent(customer.stripe_id)


def save_card(
    session: Session,
    gateway: StripeGateway,
    reader: Reader,
    payment_method_id: str,
    *,
    now: datetime,
    ip: str | None = None,
) -> CardData:
    """Make the payment method Stripe.js saved the reader's default card; mirror brand, last 4
    and issuing country, and the country of ``ip``, the reader's address, when GeoIP is
    configured (:func:`billing.services.taxes.record_ip_country`: VAT evidence beside the card's).

    Raises :class:`PaymentFailed` when the card is refused, :class:`ValidationFailed` (field
    ``card``) when the payment method is unknown or someone else's.
    """
    _lock_reader(session, reader)
    _require_verified(reader)
    payment_method_id = payment_method_id.strip()
    if not payment_method_id:
        raise ValidationFailed("Enter your card details.", field="card")
    customer = _ensure_customer(session, gateway, reader, now=now)
    replacing = customer.default_payment_method_id
    try:
        with talking_to_stripe():
            card = gateway.attach_default_payment_method(customer.stripe_id, payment_method_id)
    except GatewayError as exc:  # declined and unreachable were turned into errors for people
        raise ValidationFailed(f"This card cannot be used: {exc.message}", field="card") from exc
    mirror_card(customer, card)
    taxes.record_ip_country(customer, ip)
    audit.record(
        session,
        now=now,
        actor=reader,
        action="subscription.card_saved",
        target=_running_subscription(session, reader, now) or customer,
        details={"type": card.type, "brand": card.brand, "last4": card.last4},
    )
    if replacing and replacing != card.payment_method_id:
        notices.card_updated(
            session, reader, brand=customer.card_brand, last4=card.last4, key=card.payment_method_id
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
    customer = customer_of(session, reader)
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
        notices.welcome(
            session,
            reader,
            plan,
            first_charge_at=trial.ends_at,
            charged_now=False,
            key=f"scheduled-{scheduled.id}",
        )
        return SubscribeOutcome(None, scheduled, trial.ends_at, plan.amount, plan.currency, None)

    attempt = session.scalar(
        select(func.count(Subscription.id)).where(Subscription.customer_id == customer.id)
    )
    with talking_to_stripe():
        tax_rate = taxes.tax_rates_for(
            session, gateway, customer, now=now, settings=taxes.current_settings()
        )
        created = gateway.create_subscription(
            customer.stripe_id,
            plan.stripe_price_id,
            metadata={"tollgate_reader_id": reader.public_id, "tollgate_plan": plan.code},
            idempotency_key=f"tollgate-subscribe-{customer.stripe_id}-{attempt}-{plan.code}",
            tax_rate_ids=taxes.tax_rate_ids(tax_rate),
        )
        subscription = sync_after_change(session, gateway, created, now=now)
    audit.record(
        session,
        now=now,
        actor=reader,
        action="subscription.created",
        target=subscription,
        details={"plan": plan.code, "status": str(subscription.status)},
    )
    secret = _payment_outcome(gateway, created.latest_invoice_id, subscription)
    if secret is None:
        # Paid later (3-D Secure, another card): the mirror welcomes, under the same key.
        notices.welcome(
            session, reader, plan, first_charge_at=now, charged_now=True, key=subscription.stripe_id
        )
    return SubscribeOutcome(subscription, None, now, plan.amount, plan.currency, secret)


def overview(session: Session, reader: Reader, *, now: datetime) -> BillingOverview:
    """The reader's subscription, scheduled start, card and next charge, from the mirror alone."""
    subscriptions = _subscriptions_of(session, reader)
    running = next((s for s in subscriptions if not s.has_ended(now)), None)
    subscription = running or (subscriptions[0] if subscriptions else None)
    scheduled = _pending_schedule(session, reader)
    customer = customer_of(session, reader)
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
    credit = customer.credit if customer is not None and customer.deleted_at is None else 0
    full_amount = plan.amount * quantity if plan is not None and next_charge_at else None
    return BillingOverview(
        subscription=subscription,
        scheduled=scheduled,
        plan=plan,
        status=status,
        next_charge_at=next_charge_at,
        next_amount=max(0, full_amount - credit) if full_amount is not None else None,
        currency=plan.currency if plan is not None else None,
        card_brand=customer.card_brand if customer is not None else None,
        card_last4=customer.card_last4 if customer is not None else None,
        cancel_at_period_end=bool(running is not None and running.cancel_at_period_end),
        access_until=access_until,
        payment_problem=running is not None and running.status in PROBLEM_STATUSES,
        credit=credit,
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
    with talking_to_stripe():
        gateway.cancel_at_period_end(subscription.stripe_id)
        subscription = _resync(session, gateway, subscription.stripe_id, now=now)
    _audit(session, reader, "cancelled", subscription, now)
    notices.cancelled(session, reader, subscription)
    return subscription


def resume(
    session: Session, gateway: StripeGateway, reader: Reader, *, now: datetime
) -> Subscription:
    """Take back a cancellation at period end: the subscription renews again."""
    _lock_reader(session, reader)
    subscription = _manageable(session, reader, now)
    if not subscription.cancel_at_period_end:
        return subscription
    with talking_to_stripe():
        gateway.resume(subscription.stripe_id)
        subscription = _resync(session, gateway, subscription.stripe_id, now=now)
    _audit(session, reader, "resumed", subscription, now)
    notices.resumed(session, reader, subscription)
    return subscription


SWITCH_PREVIEW_MAX_AGE = timedelta(minutes=30)
"""How long a switch preview may be confirmed: its proration moment is charged as shown until
then; an older one is shown again as of now."""


@dataclass(frozen=True)
class SwitchPreview:
    """What switching to ``plan`` charges: ``charged_now`` at once (after the credit), then
    ``next_amount`` on ``next_charge_at``; ``credit_after`` is the credit left over.

    ``proration_date`` is the moment the unused time was priced at (whole seconds): confirming
    with it (:func:`switch_plan`) charges exactly ``charged_now``, however late the reader
    clicks, within :data:`SWITCH_PREVIEW_MAX_AGE`.
    """

    plan: Plan
    charged_now: int
    credit_after: int
    next_charge_at: datetime
    next_amount: int
    currency: str
    proration_date: datetime


def add_interval(moment: datetime, interval: BillingInterval) -> datetime:
    """``moment`` one billing interval later (the same day next month or year, clamped)."""
    months = 12 if interval == BillingInterval.YEAR else 1
    month_index = moment.month - 1 + months
    year, month = moment.year + month_index // 12, month_index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def preview_switch(
    session: Session, gateway: StripeGateway, reader: Reader, plan_code: str, *, now: datetime
) -> SwitchPreview:
    """What :func:`switch_plan` to ``plan_code`` would charge now and later, asked of Stripe's
    invoice preview (nothing changes), prorated as of ``now``. A scheduled start charges
    nothing before it starts."""
    plan = _sellable_plan(session, plan_code)
    assert plan.stripe_price_id is not None
    scheduled = _pending_schedule(session, reader)
    subscription = _running_subscription(session, reader, now)
    customer = customer_of(session, reader)
    credit = customer.credit if customer is not None else 0
    moment = now.replace(microsecond=0)
    if subscription is None:
        if scheduled is None:
            raise NothingToManage("You have no subscription to switch.")
        return SwitchPreview(
            plan,
            0,
            credit,
            scheduled.starts_at,
            max(0, plan.amount - credit),
            plan.currency,
            moment,
        )
    moment = _priced_now(subscription, now)
    with talking_to_stripe():
        preview = gateway.preview_price_change(
            subscription.stripe_id, plan.stripe_price_id, proration_date=moment
        )
    credit_after = max(0, credit - preview.total)
    amount = plan.amount * subscription.quantity
    if plan.interval != subscription.plan.interval:
        next_at = add_interval(now, plan.interval)
    else:
        next_at = subscription.current_period_end
    return SwitchPreview(
        plan,
        preview.amount_due,
        credit_after,
        next_at,
        max(0, amount - credit_after),
        preview.currency or plan.currency,
        moment,
    )


def switch_plan(
    session: Session,
    gateway: StripeGateway,
    reader: Reader,
    plan_code: str,
    *,
    now: datetime,
    proration_date: datetime | None = None,
) -> Subscription | ScheduledSubscription:
    """Move the reader to another individual plan (monthly <-> yearly).

    A scheduled start just changes its plan. A running subscription changes its price on Stripe,
    which invoices the difference at once; if that payment fails the change is mirrored (the
    subscription is then ``past_due``) and :class:`PaymentFailed` is raised.

    ``proration_date`` is the :class:`SwitchPreview`'s the reader confirmed: Stripe prorates as
    of that moment, so the charge is the one they were shown (without it, as of ``now``). It
    raises :class:`PreviewExpired` when it is in the future, older than
    :data:`SWITCH_PREVIEW_MAX_AGE`, or from before the current period (a renewal since).
    """
    _lock_reader(session, reader)
    plan = _sellable_plan(session, plan_code)
    assert plan.stripe_price_id is not None
    scheduled = _pending_schedule(session, reader)
    if scheduled is not None and _running_subscription(session, reader, now) is None:
        if scheduled.plan_id != plan.id:
            before_plan = scheduled.plan
            scheduled.plan = plan
            audit.record(
                session,
                now=now,
                actor=reader,
                action="subscription.switched",
                target=reader,
                details={"scheduled": scheduled.id, "from": before_plan.code, "to": plan.code},
            )
            notices.plan_switched(
                session,
                reader,
                before=before_plan,
                after=plan,
                charged_now=None,
                next_charge_at=scheduled.starts_at,
                next_amount=plan.amount,
                credit=0,
                key=f"scheduled-{scheduled.id}:{plan.code}:{now.isoformat()}",
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
    moment = _proration_moment(subscription, proration_date, now=now)
    before_plan = subscription.plan
    before = before_plan.code
    changed_invoice: Invoice | None = None
    with talking_to_stripe():
        previous_invoice = gateway.retrieve_subscription(subscription.stripe_id).latest_invoice_id
        changed = gateway.change_price(
            subscription.stripe_id, plan.stripe_price_id, proration_date=moment
        )
        subscription = sync_after_change(session, gateway, changed, now=now)
        sync_customer(session, gateway, subscription.customer.stripe_id, now=now)
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
    if changed.latest_invoice_id and changed.latest_invoice_id != previous_invoice:
        changed_invoice = by_stripe_id(session, Invoice, changed.latest_invoice_id)
    credit = subscription.customer.credit
    notices.plan_switched(
        session,
        reader,
        before=before_plan,
        after=plan,
        charged_now=changed_invoice.amount_paid if changed_invoice is not None else None,
        next_charge_at=subscription.current_period_end,
        next_amount=max(0, plan.amount * subscription.quantity - credit),
        credit=credit,
        key=f"{subscription.stripe_id}:{changed.latest_invoice_id}:{plan.code}",
    )
    return subscription


def _priced_now(subscription: Subscription, now: datetime) -> datetime:
    """The moment a switch made now is prorated at: ``now`` in whole seconds, and never before
    the current period (whose start is Stripe's clock, which may run a little ahead of ours)."""
    return max(now.replace(microsecond=0), subscription.current_period_start)


def _proration_moment(
    subscription: Subscription, proration_date: datetime | None, *, now: datetime
) -> datetime:
    """The moment a switch is prorated at: the confirmed preview's, checked, or now."""
    latest = _priced_now(subscription, now)
    if proration_date is None:
        return latest
    if proration_date.tzinfo is None:
        raise PreviewExpired(
            "This preview is not one we made: look at the switch again.", field="proration_date"
        )
    if proration_date > latest:
        raise PreviewExpired(
            "This preview is dated in the future: look at the switch again.",
            field="proration_date",
        )
    if now - proration_date > SWITCH_PREVIEW_MAX_AGE or (
        proration_date < subscription.current_period_start
    ):
        raise PreviewExpired(
            "The price shown is out of date: here it is again as of now. Please confirm again.",
            field="proration_date",
        )
    return proration_date


def cancel_now(
    session: Session, gateway: StripeGateway, reader: Reader, *, now: datetime
) -> Subscription:
    """End the subscription immediately (no refund); access stops now."""
    _lock_reader(session, reader)
    subscription = _manageable(session, reader, now)
    with talking_to_stripe():
        gateway.cancel_now(subscription.stripe_id)
        subscription = _resync(session, gateway, subscription.stripe_id, now=now)
    _audit(session, reader, "ended", subscription, now)
    notices.cancelled(session, reader, subscription)
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
        with talking_to_stripe():
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


def trials_of_subscribers(session: Session, *, now: datetime) -> set[int]:
    """Ids of trials whose reader already has a running subscription (paid or being paid): they
    get no "subscribe now" reminder or "trial ended" mail; their trial became the subscription."""
    running = [
        s.reader_id
        for s in session.scalars(select(Subscription).where(Subscription.reader_id.is_not(None)))
        if not s.has_ended(now)
    ]
    if not running:
        return set()
    return set(session.scalars(select(Trial.id).where(Trial.reader_id.in_(running))))


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
        tax_rate = taxes.tax_rates_for(
            session, gateway, customer, now=now, settings=taxes.current_settings()
        )
        created = gateway.create_subscription(
            customer.stripe_id,
            plan.stripe_price_id,
            metadata={
                "tollgate_reader_id": reader.public_id,
                "tollgate_plan": plan.code,
                "tollgate_scheduled_id": tag,
            },
            idempotency_key=f"tollgate-scheduled-{scheduled.id}",
            tax_rate_ids=taxes.tax_rate_ids(tax_rate),
        )
    subscription = sync_after_change(session, gateway, created, now=now)
    if subscription.status == SubscriptionStatus.INCOMPLETE:
        mail_payment_problem(session, gateway, subscription, created.latest_invoice_id)
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


# --- after a change on Stripe -------------------------------------------------------------------


def sync_after_change(
    session: Session, gateway: StripeGateway, changed: StripeSubscriptionData, *, now: datetime
) -> Subscription:
    """After we changed a subscription on Stripe: mirror its newest invoice and itself."""
    if changed.latest_invoice_id:
        sync_invoice(session, gateway, changed.latest_invoice_id, now=now)
        subscription = by_stripe_id(session, Subscription, changed.id)
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
    with talking_to_stripe():
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


def _ensure_customer(
    session: Session, gateway: StripeGateway, reader: Reader, *, now: datetime
) -> Customer:
    """The reader's Stripe customer, created (tagged with their public id) when they have none.

    A customer deleted on Stripe stays in the mirror for history, unlinked; a new one is created.
    """
    customer = customer_of(session, reader)
    if customer is not None and customer.deleted_at is None:
        return customer
    previous = customer.stripe_id if customer is not None else "first"
    if customer is not None:
        customer.reader = None
        session.flush()
    with talking_to_stripe():
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


def mirror_card(customer: Customer, card: CardData) -> None:
    """Copy what we show of ``card`` (brand, last four, country, payment method) onto ``customer``."""
    assign(
        customer,
        {
            "card_brand": card_label(card),
            "card_last4": card.last4,
            "default_payment_method_id": card.payment_method_id,
            "card_country": card.country,
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
def talking_to_stripe() -> Iterator[None]:
    """Turn the gateway's refusals into errors for people: declined cards, Stripe unreachable."""
    try:
        yield
    except PaymentDeclinedError as exc:
        raise PaymentFailed(exc.message, field="card") from exc
    except GatewayUnavailableError as exc:
        raise PaymentServiceUnavailable(
            "Our payment provider is not answering. Nothing was charged; "
            "please try again in a minute."
        ) from exc
