"""What a group pays: buying seats (by card or by invoice), changing the seat count at Stripe's
prorated price, cancelling or renewing, and watching invoices paid by bank transfer."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from billing.errors import Conflict, NotFound, ValidationFailed
from billing.gateway import StripeGateway
from billing.models import (
    CollectionMethod,
    Customer,
    Group,
    GroupMembership,
    Invoice,
    InvoiceStatus,
    MembershipRole,
    Plan,
    PlanKind,
    Reader,
    Subscription,
    SubscriptionStatus,
)
from billing.services import audit, mail, taxes
from billing.services.accounts import InvalidLink, dumps, loads, normalise_email
from billing.services.group_tax import GroupTax, group_tax
from billing.services.groups_seats import (
    GroupRules,
    admins_of,
    current_subscription,
    lock_seats,
    require_admin,
    seats_in_use,
)
from billing.services.payments import (
    mirror_card,
    sync_after_change,
    talking_to_stripe,
)
from billing.services.stripe_mirror import sync_invoice, sync_subscription
from billing.services.trials import EmailNotVerified


@dataclass(frozen=True)
class Quote:
    """What ``seats`` seats cost a year: net, VAT (on top of the net price) and total."""

    seats: int
    unit_amount: int
    currency: str
    net: int
    tax: GroupTax
    vat: int

    @property
    def total(self) -> int:
        """Net plus VAT."""
        return self.net + self.vat


def seat_plan(session: Session) -> Plan:
    """The per-seat plan on sale to organisations."""
    plan = session.scalar(
        select(Plan).where(Plan.kind == PlanKind.GROUP, Plan.active.is_(True)).order_by(Plan.id)
    )
    if plan is None or plan.stripe_price_id is None:
        raise NotFound("No group plan is on sale (run flask billing sync-plans).")
    return plan


def quote(
    session: Session, seats: int, *, country: str, vat_id: str | None, now: datetime
) -> Quote:
    """The yearly price of ``seats`` seats for an organisation in ``country``."""
    plan = seat_plan(session)
    net = plan.amount * seats
    tax = group_tax(country, vat_id, now)
    return Quote(seats, plan.amount, plan.currency, net, tax, tax.tax_on(net))


def _validated_order(
    name: str, billing_email: str, country: str, vat_id: str, seats: int, rules: GroupRules
) -> tuple[str, str, str, str | None]:
    clean_name = " ".join((name or "").split())
    if not clean_name:
        raise ValidationFailed("Enter the organisation's name.", field="name")
    if len(clean_name) > 200:
        raise ValidationFailed("The name is too long (200 characters at most).", field="name")
    email = normalise_email(billing_email, field="billing_email")
    code = (country or "").strip().upper()
    if not re.fullmatch(r"[A-Z]{2}", code):
        raise ValidationFailed("Choose the organisation's country.", field="country")
    vat = re.sub(r"[\s.-]", "", vat_id or "").upper() or None
    if vat is not None and not re.fullmatch(r"[A-Z]{2}[0-9A-Z]{2,13}", vat):
        raise ValidationFailed("This is not a VAT number such as DE123456789.", field="vat_id")
    if seats < rules.min_seats:
        raise ValidationFailed(f"Buy at least {rules.min_seats} seats.", field="seats")
    if seats > 100_000:
        raise ValidationFailed("For more than 100,000 seats, please write to us.", field="seats")
    return clean_name, email, code, vat


def create_group(
    session: Session,
    gateway: StripeGateway,
    admin: Reader,
    *,
    name: str,
    billing_email: str,
    country: str,
    vat_id: str,
    seats: int,
    by_invoice: bool,
    rules: GroupRules,
    now: datetime,
) -> Group:
    """Create the organisation with ``admin`` as its first admin, and its Stripe customer.


    ``by_invoice``: the subscription of ``seats`` seats starts at once with
    ``collection_method=send_invoice`` (the group is active from the start and has
    ``rules.days_until_due`` days to pay by bank transfer). Otherwise the admin adds a card next
    and :func:`subscribe_by_card` starts it.
    """
    if not admin.is_verified:
        raise EmailNotVerified("Please verify your e-mail address first: we sent you a link.")
    clean_name, email, code, vat = _validated_order(
        name, billing_email, country, vat_id, seats, rules
    )
    treatment = taxes.business_treatment(code, vat, now=now, settings=taxes.current_settings())
    plan = seat_plan(session)
    group = Group(name=clean_name, billing_email=email, country=code, vat_id=vat, created_at=now)
    session.add(group)
    session.flush()
    session.add(
        GroupMembership(group=group, reader_id=admin.id, role=MembershipRole.ADMIN, joined_at=now)
    )
    with talking_to_stripe():
        data = gateway.create_customer(
            email,
            name=clean_name,
            country=code,
            vat_id=vat,
            tax_exempt=taxes.tax_exempt_for(treatment),
            metadata={"tollgate_group_id": group.public_id},
            idempotency_key=f"tollgate-group-customer-{group.public_id}",
        )
    customer = Customer(
        stripe_id=data.id,
        group_id=group.id,
        email=email,
        email_canonical=email,
        country=code,
        vat_id=vat,
        created_at=now,
    )
    taxes.record_business_treatment(customer, treatment)
    session.add(customer)
    session.flush()
    audit.record(
        session,
        now=now,
        actor=admin,
        action="group.created",
        target=group,
        details={"seats": seats, "by_invoice": by_invoice, "country": code},
    )
    if by_invoice:
        _start_subscription(
            session,
            gateway,
            group,
            customer,
            plan,
            seats,
            admin,
            now=now,
            rules=rules,
            invoice=True,
        )
    return group


def _start_subscription(
    session: Session,
    gateway: StripeGateway,
    group: Group,
    customer: Customer,
    plan: Plan,
    seats: int,
    admin: Reader,
    *,
    now: datetime,
    rules: GroupRules,
    invoice: bool,
) -> Subscription:
    assert plan.stripe_price_id is not None
    method = CollectionMethod.SEND_INVOICE if invoice else CollectionMethod.CHARGE_AUTOMATICALLY
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
            quantity=seats,
            metadata={"tollgate_group_id": group.public_id, "tollgate_plan": plan.code},
            collection_method=method.value,
            days_until_due=rules.days_until_due if invoice else None,
            tax_rate_ids=taxes.tax_rate_ids(tax_rate),
            idempotency_key=f"tollgate-group-subscribe-{group.public_id}-{attempt}",
        )
        subscription = sync_after_change(session, gateway, created, now=now)
    audit.record(
        session,
        now=now,
        actor=admin,
        action="group.subscribed",
        target=group,
        details={
            "seats": seats,
            "collection_method": method.value,
            "status": str(subscription.status),
        },
    )
    return subscription


def card_setup(session: Session, gateway: StripeGateway, group: Group) -> str:
    """A SetupIntent client secret to save the organisation's card with Stripe.js."""
    customer = _customer(session, group)
    with talking_to_stripe():
        return gateway.create_setup_intent(customer.stripe_id).client_secret


def subscribe_by_card(
    session: Session,
    gateway: StripeGateway,
    group: Group,
    admin: Reader,
    payment_method_id: str,
    seats: int,
    *,
    rules: GroupRules,
    now: datetime,
) -> Subscription:
    """Save the card Stripe.js confirmed as the group's and start its subscription of ``seats``."""
    require_admin(session, group, admin)
    if current_subscription(session, group, now) is not None:
        raise Conflict("This organisation already has a subscription.")
    if seats < rules.min_seats:
        raise ValidationFailed(f"Buy at least {rules.min_seats} seats.", field="seats")
    if not payment_method_id.strip():
        raise ValidationFailed("Enter the card details.", field="card")
    customer = _customer(session, group)
    with talking_to_stripe():
        card = gateway.attach_default_payment_method(customer.stripe_id, payment_method_id.strip())
    mirror_card(customer, card)
    return _start_subscription(
        session,
        gateway,
        group,
        customer,
        seat_plan(session),
        seats,
        admin,
        now=now,
        rules=rules,
        invoice=False,
    )


def _customer(session: Session, group: Group) -> Customer:
    customer = session.scalar(select(Customer).where(Customer.group_id == group.id))
    if customer is None:
        raise NotFound("This organisation has no billing account yet.")
    return customer


PRORATION_DATE_MAX_AGE = timedelta(hours=1)
"""How long a seat-change price shown to an admin may be confirmed at that price."""

SEAT_CHANGE_SALT = "tollgate.seat-change.v1"
"""The purpose of the signed value a seat-change confirmation carries (see
:func:`seat_change_token`)."""


@dataclass(frozen=True)
class SeatQuote:
    """What changing the seat count costs, as Stripe's invoice preview prorates it at
    ``proration_date``: net and VAT in minor units (negative: a credit), added to the next
    invoice."""

    seats_from: int
    seats_to: int
    net: int
    tax: int
    currency: str
    proration_date: datetime
    tax_note: str
    """How VAT applies: the rate and country, or the reverse-charge mention."""

    @property
    def total(self) -> int:
        """Net plus VAT."""
        return self.net + self.tax


def _proration_moment(subscription: Subscription, now: datetime) -> datetime:
    """The moment a seat change is prorated for: now, to the second, never before the period."""
    return max(now.replace(microsecond=0), subscription.current_period_start)


def _checked_seat_count(
    session: Session, group: Group, new_seats: int, *, rules: GroupRules
) -> None:
    if new_seats < rules.min_seats:
        raise ValidationFailed(f"Keep at least {rules.min_seats} seats.", field="seats")
    in_use = seats_in_use(session, group)
    if new_seats < in_use:
        raise ValidationFailed(
            f"{in_use} seats are in use: remove members before going below that.", field="seats"
        )


def seat_change_price(
    session: Session,
    gateway: StripeGateway,
    group: Group,
    new_seats: int,
    *,
    rules: GroupRules,
    now: datetime,
) -> SeatQuote:
    """What changing to ``new_seats`` now costs, asked of Stripe's invoice preview (nothing
    changes): the prorated rest of the paid year with its VAT, at a proration date that
    :func:`change_seats` then uses, so the change costs exactly what was shown."""
    subscription = current_subscription(session, group, now)
    if subscription is None:
        raise NotFound("This organisation has no running subscription.")
    _checked_seat_count(session, group, new_seats, rules=rules)
    if new_seats == subscription.quantity:
        raise ValidationFailed(f"The organisation already has {new_seats} seats.", field="seats")
    moment = _proration_moment(subscription, now)
    with talking_to_stripe():
        preview = gateway.preview_quantity_change(
            subscription.stripe_id, new_seats, proration_date=moment
        )
    return SeatQuote(
        seats_from=subscription.quantity,
        seats_to=new_seats,
        net=preview.net,
        tax=preview.tax,
        currency=preview.currency or subscription.plan.currency,
        proration_date=preview.proration_date,
        tax_note=group_tax(group.country, group.vat_id, now).note,
    )


@dataclass(frozen=True)
class SeatChangeConfirmation:
    """A seat change as its price was shown: from and to how many seats, prorated when."""

    seats_from: int
    seats_to: int
    proration_date: datetime


def seat_change_token(
    secret_keys: Sequence[str], group: Group, quote: SeatQuote, now: datetime
) -> str:
    """The signed value the confirmation form of ``quote`` carries: it binds the group, the seat
    counts, the proration moment and the total shown, so only the change shown can be confirmed."""
    payload = {
        "g": group.public_id,
        "f": quote.seats_from,
        "s": quote.seats_to,
        "p": int(quote.proration_date.timestamp()),
        "t": quote.total,
    }
    return dumps(secret_keys, SEAT_CHANGE_SALT, payload, now)


def confirmed_seat_change(
    secret_keys: Sequence[str], group: Group, seats: int, token: str, now: datetime
) -> SeatChangeConfirmation:
    """The seat change a confirmation's signed ``token`` was shown for, if it is one of ours, for
    ``group`` and for ``seats``; ValidationFailed (field ``seats``) otherwise: missing, forged,
    of another group or seat count (a stale one is refused by :func:`change_seats`)."""
    not_shown = ValidationFailed(
        "Confirm the price difference shown for these seats.", field="seats"
    )
    if not token:
        raise not_shown
    try:
        # Staleness is :func:`change_seats`'s to judge (it says "out of date"); a day bounds it.
        payload = loads(secret_keys, SEAT_CHANGE_SALT, token, now, max_age=86_400)
    except InvalidLink as error:
        raise not_shown from error
    shown_from, shown_to, moment = payload.get("f"), payload.get("s"), payload.get("p")
    if (
        payload.get("g") != group.public_id
        or not isinstance(shown_from, int)
        or not isinstance(moment, int)
        or shown_to != seats
    ):
        raise not_shown
    return SeatChangeConfirmation(
        seats_from=shown_from,
        seats_to=seats,
        proration_date=datetime.fromtimestamp(moment, tz=UTC),
    )


def change_seats(
    session: Session,
    gateway: StripeGateway,
    group: Group,
    admin: Reader,
    new_seats: int,
    *,
    rules: GroupRules,
    now: datetime,
    proration_date: datetime | None = None,
    quoted_from: int | None = None,
) -> Subscription:
    """Change the number of seats (Stripe prorates onto the next invoice, at ``proration_date``
    when a price was shown for it); never fewer than the seats in use.

    A ``proration_date`` older than :data:`PRORATION_DATE_MAX_AGE`, before the paid period or
    later than now is refused (field ``seats``), and so is a change whose price was shown from
    ``quoted_from`` seats when the group no longer has that many: the price shown must be asked
    for again.
    """
    require_admin(session, group, admin)
    seats = lock_seats(session, group, now)
    subscription = current_subscription(session, group, now)
    if subscription is None:
        raise NotFound("This organisation has no running subscription.")
    _checked_seat_count(session, group, new_seats, rules=rules)
    if new_seats == seats:
        return subscription
    if quoted_from is not None and quoted_from != seats:
        raise ValidationFailed(
            f"The organisation now has {seats} seats, not the {quoted_from} the price was shown"
            " for: look at the price difference again.",
            field="seats",
        )
    latest = _proration_moment(subscription, now)
    earliest = max(latest - PRORATION_DATE_MAX_AGE, subscription.current_period_start)
    if proration_date is not None and not earliest <= proration_date <= latest:
        raise ValidationFailed(
            "The price shown is out of date: look at the price difference again.", field="seats"
        )
    with talking_to_stripe():
        changed = gateway.change_quantity(
            subscription.stripe_id, new_seats, proration_date=proration_date
        )
        subscription = sync_after_change(session, gateway, changed, now=now)
    audit.record(
        session,
        now=now,
        actor=admin,
        action="group.seats_changed",
        target=group,
        details={"from": seats, "to": new_seats},
    )
    return subscription


def set_renewal(
    session: Session,
    gateway: StripeGateway,
    group: Group,
    admin: Reader,
    renew: bool,
    *,
    now: datetime,
) -> Subscription:
    """Cancel the group's subscription at the end of the paid year (``renew`` False; members
    keep reading until then) or take the cancellation back (``renew`` True)."""
    require_admin(session, group, admin)
    lock_seats(session, group, now)
    subscription = current_subscription(session, group, now)
    if subscription is None:
        raise NotFound("This organisation has no running subscription.")
    if subscription.cancel_at_period_end != renew:
        return subscription
    with talking_to_stripe():
        if renew:
            gateway.resume(subscription.stripe_id)
        else:
            gateway.cancel_at_period_end(subscription.stripe_id)
        synced = sync_subscription(session, gateway, subscription.stripe_id, now=now)
    audit.record(
        session,
        now=now,
        actor=admin,
        action="group.resumed" if renew else "group.cancelled",
        target=group,
        details={"ends_at": subscription.current_period_end.isoformat()},
    )
    return synced or subscription


def invoices_to_watch(session: Session) -> list[int]:
    """Group subscriptions paid by invoice with an invoice still open: time alone makes them
    past due (Stripe then says so), so ``tick`` looks at them."""
    return list(
        session.scalars(
            select(Subscription.id)
            .join(Invoice, Invoice.subscription_id == Subscription.id)
            .where(
                Subscription.group_id.is_not(None),
                Subscription.collection_method == CollectionMethod.SEND_INVOICE,
                Invoice.status == InvoiceStatus.OPEN,
            )
            .distinct()
            .order_by(Subscription.id)
        )
    )


def watch_invoice(
    session: Session, gateway: StripeGateway, subscription_id: int, *, now: datetime
) -> bool:
    """Mirror a subscription paid by invoice and its open invoices again; whether its status
    changed (past due: the billing e-mail and the admins are mailed by the mirror)."""
    subscription = session.get(Subscription, subscription_id)
    if subscription is None:
        return False
    before = subscription.status
    open_invoices = session.scalars(
        select(Invoice.stripe_id).where(
            Invoice.subscription_id == subscription.id, Invoice.status == InvoiceStatus.OPEN
        )
    ).all()
    for stripe_id in open_invoices:
        sync_invoice(session, gateway, stripe_id, now=now)
    synced = sync_subscription(session, gateway, subscription.stripe_id, now=now)
    return synced is not None and synced.status != before


def mail_payment_problem(
    session: Session, gateway: StripeGateway, subscription: Subscription, invoice_id: str | None
) -> None:
    """Tell the group's billing e-mail and its admins that a payment is overdue or failed, once
    per invoice: members keep reading during the grace, then lose group access."""
    group = session.get(Group, subscription.group_id)
    if group is None:
        return
    amount, currency = subscription.plan.amount * subscription.quantity, subscription.plan.currency
    if invoice_id is not None:
        invoice = gateway.retrieve_invoice(invoice_id)
        amount, currency = invoice.amount_due - invoice.amount_paid, invoice.currency
    recipients = [group.billing_email, *(m.reader.email for m in admins_of(session, group))]
    for address in dict.fromkeys(recipients):
        mail.send(
            session,
            address,
            "group_payment_failed",
            key=f"group-payment-failed-{subscription.stripe_id}-{invoice_id}-{address}",
            group=group,
            amount_due=amount,
            currency=currency,
            by_invoice=subscription.collection_method == CollectionMethod.SEND_INVOICE,
            keeps_access=subscription.status == SubscriptionStatus.PAST_DUE,
        )


def simulate_bank_transfer(
    session: Session, gateway: StripeGateway, group: Group, *, now: datetime
) -> int:
    """Development and tests: the transfers paying the group's open invoices arrive at the
    stand-in (each with the invoice as reference); the invoices are mirrored. How many were paid."""
    customer = _customer(session, group)
    paid = 0
    with talking_to_stripe():
        for found in gateway.list_invoices(customer_id=customer.stripe_id):
            if found.status != "open":
                continue
            due = found.amount_due - found.amount_paid
            gateway.fund_bank_transfer(customer.stripe_id, due, found.currency, reference=found.id)
            sync_invoice(session, gateway, found.id, now=now)
            paid += 1
    if paid == 0:
        raise Conflict("No invoice of this organisation is waiting for payment.")
    return paid
