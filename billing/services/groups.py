"""Group subscriptions: organisations buy seats, invite colleagues, allow domains and networks.

Seats are never oversold: every claim of a seat (an invite accepted, a domain join) and every
change of the seat count locks the group's subscription row (``SELECT ... FOR UPDATE``) before
counting, so on PostgreSQL the last seat goes to exactly one of many claimants; SQLite runs one
writing transaction at a time. Invite links are itsdangerous tokens with their own salt, bound
to the invited address, and stored only as a SHA-256. Domains and office ranges take effect once
staff approve them.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from billing.errors import Conflict, DomainError, Forbidden, NotFound, ValidationFailed
from billing.gateway import StripeGateway
from billing.models import (
    CollectionMethod,
    Customer,
    Group,
    GroupDomain,
    GroupInvite,
    GroupIPRange,
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
from billing.services.accounts import InvalidLink, _dumps, _loads, normalise_email
from billing.services.group_networks import NetworkRules, bounds, parse_network
from billing.services.group_tax import GroupTax, group_tax
from billing.services.payments import (
    _mirror_card,
    _sync_after_change,
    _talking_to_stripe,
)
from billing.services.stripe_mirror import sync_invoice, sync_subscription
from billing.services.trials import EmailNotVerified

INVITE_SALT = "tollgate.group-invite.v1"
WEBMAIL_DOMAINS = frozenset(
    {
        "aol.com", "gmail.com", "googlemail.com", "gmx.com", "gmx.de", "gmx.net", "hotmail.com",
        "hotmail.fr", "icloud.com", "laposte.net", "libero.it", "live.com", "mail.com",
        "mail.ru", "me.com", "msn.com", "orange.fr", "outlook.com", "proton.me",
        "protonmail.com", "t-online.de", "web.de", "yahoo.com", "yahoo.fr", "yandex.com",
        "yandex.ru", "zoho.com",
    }
)  # fmt: skip
"""Public webmail providers: anyone can have an address there, so no group may claim them."""
_DOMAIN = re.compile(r"(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")
MAX_INVITES_AT_ONCE = 200


class NoSeatsLeft(Conflict):
    """Every seat of the group is taken."""

    code = "no_seats_left"


class InvalidInvite(DomainError):
    """An invitation link that is forged, expired, used, revoked or for another address."""

    code = "invalid_invite"


@dataclass(frozen=True)
class GroupRules:
    """The group settings of the running app."""

    min_seats: int = 3
    invite_days: int = 7
    days_until_due: int = 30
    idle_days: int = 60
    networks: NetworkRules = field(default_factory=NetworkRules)

    @classmethod
    def from_config(cls, config: Any) -> GroupRules:
        """The rules set by ``GROUP_*`` settings."""
        return cls(
            min_seats=int(config["GROUP_MIN_SEATS"]),
            invite_days=int(config["GROUP_INVITE_DAYS"]),
            days_until_due=int(config["GROUP_INVOICE_DAYS_UNTIL_DUE"]),
            idle_days=int(config["GROUP_IDLE_DAYS"]),
            networks=NetworkRules(
                int(config["GROUP_WIDEST_IPV4"]), int(config["GROUP_WIDEST_IPV6"])
            ),
        )


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


@dataclass
class InviteReport:
    """What became of each address of a (bulk) invitation."""

    sent: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)


# --- buying -------------------------------------------------------------------------------------


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
    with _talking_to_stripe():
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
    with _talking_to_stripe():
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
        subscription = _sync_after_change(session, gateway, created, now=now)
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
    with _talking_to_stripe():
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
    with _talking_to_stripe():
        card = gateway.attach_default_payment_method(customer.stripe_id, payment_method_id.strip())
    _mirror_card(customer, card)
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


# --- the group and its seats --------------------------------------------------------------------


def by_public_id(session: Session, public_id: str) -> Group | None:
    """The group with ``public_id``."""
    return session.scalar(select(Group).where(Group.public_id == public_id))


def current_subscription(session: Session, group: Group, now: datetime) -> Subscription | None:
    """The group's newest subscription that has not ended."""
    rows = session.scalars(
        select(Subscription)
        .where(Subscription.group_id == group.id)
        .order_by(Subscription.created_at.desc(), Subscription.id.desc())
    )
    return next((s for s in rows if not s.has_ended(now)), None)


def seat_count(session: Session, group: Group, now: datetime) -> int:
    """Seats bought: the running subscription's quantity (0 without one)."""
    subscription = current_subscription(session, group, now)
    return subscription.quantity if subscription is not None else 0


def seats_in_use(session: Session, group: Group) -> int:
    """Current members holding a seat (admins too, unless admins take no seat)."""
    query = select(func.count(GroupMembership.id)).where(
        GroupMembership.group_id == group.id, GroupMembership.removed_at.is_(None)
    )
    if not group.admins_take_seat:
        query = query.where(GroupMembership.role == MembershipRole.MEMBER)
    return int(session.scalar(query) or 0)


def pending_invites(session: Session, group: Group, now: datetime) -> list[GroupInvite]:
    """Invitations neither accepted, revoked nor expired, newest first."""
    return list(
        session.scalars(
            select(GroupInvite)
            .where(
                GroupInvite.group_id == group.id,
                GroupInvite.accepted_at.is_(None),
                GroupInvite.revoked_at.is_(None),
                GroupInvite.expires_at > now,
            )
            .order_by(GroupInvite.created_at.desc(), GroupInvite.id.desc())
        )
    )


def members(session: Session, group: Group) -> list[GroupMembership]:
    """Current memberships, admins first, then by joining date."""
    return list(
        session.scalars(
            select(GroupMembership)
            .where(GroupMembership.group_id == group.id, GroupMembership.removed_at.is_(None))
            .order_by(GroupMembership.role, GroupMembership.joined_at, GroupMembership.id)
        )
    )


def groups_of(session: Session, reader: Reader) -> list[tuple[Group, MembershipRole]]:
    """The groups ``reader`` currently belongs to, with their role."""
    rows = session.execute(
        select(Group, GroupMembership.role)
        .join(GroupMembership, GroupMembership.group_id == Group.id)
        .where(GroupMembership.reader_id == reader.id, GroupMembership.removed_at.is_(None))
        .order_by(Group.name)
    )
    return list(rows)


def require_admin(session: Session, group: Group, reader: Reader) -> GroupMembership:
    """The reader's admin membership of ``group``; NotFound for anyone else (no probing)."""
    membership = _membership(session, group, reader)
    if membership is None or membership.removed_at is not None:
        raise NotFound("No such organisation.")
    if membership.role != MembershipRole.ADMIN:
        raise Forbidden("Only the organisation's admins can do this.")
    return membership


def _membership(session: Session, group: Group, reader: Reader) -> GroupMembership | None:
    return session.scalar(
        select(GroupMembership).where(
            GroupMembership.group_id == group.id, GroupMembership.reader_id == reader.id
        )
    )


def _lock_seats(session: Session, group: Group, now: datetime) -> int:
    """Lock the group's running subscription row and return its seats (0 without one)."""
    subscription = current_subscription(session, group, now)
    if subscription is None:
        return 0
    locked = session.scalar(
        select(Subscription.quantity)
        .where(Subscription.id == subscription.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return int(locked or 0)


def claim_seat(
    session: Session,
    group: Group,
    reader: Reader,
    *,
    now: datetime,
    role: MembershipRole = MembershipRole.MEMBER,
) -> GroupMembership:
    """Give ``reader`` a seat in ``group`` (idempotent for a current member).

    Raises :class:`NoSeatsLeft` when every seat is taken, after mailing the admins (once a day at
    most): the caller commits before showing the refusal, so that mail is not lost.
    """
    seats = _lock_seats(session, group, now)
    membership = _membership(session, group, reader)
    if membership is not None and membership.removed_at is None:
        return membership
    takes_seat = role == MembershipRole.MEMBER or group.admins_take_seat
    if takes_seat and seats_in_use(session, group) >= seats:
        _tell_admins_seats_are_full(session, group, reader, now)
        raise NoSeatsLeft("No seats are left in this organisation: ask your admin for one.")
    if membership is None:
        membership = GroupMembership(
            group_id=group.id, reader_id=reader.id, role=role, joined_at=now
        )
        session.add(membership)
    else:
        membership.removed_at, membership.role, membership.joined_at = None, role, now
    session.flush()
    audit.record(
        session,
        now=now,
        actor=reader,
        action="group.joined",
        target=group,
        details={"role": role.value},
    )
    return membership


def _tell_admins_seats_are_full(
    session: Session, group: Group, reader: Reader, now: datetime
) -> None:
    last = group.seats_full_mailed_at
    if last is not None and now - last < timedelta(days=1):
        return
    group.seats_full_mailed_at = now
    for admin in _admins(session, group):
        mail.send(
            session,
            admin.reader.email,
            "group_seats_full",
            key=f"group-seats-full-{group.public_id}-{now.date().isoformat()}-{admin.reader_id}",
            group=group,
            who=reader.email,
        )


def _admins(session: Session, group: Group) -> list[GroupMembership]:
    return [m for m in members(session, group) if m.role == MembershipRole.ADMIN]


def remove_member(
    session: Session, group: Group, admin: Reader, membership_id: int, *, now: datetime
) -> GroupMembership:
    """Take the seat away from a member (freed at once); a group always keeps one admin."""
    require_admin(session, group, admin)
    _lock_seats(session, group, now)
    membership = session.get(GroupMembership, membership_id)
    if membership is None or membership.group_id != group.id or membership.removed_at is not None:
        raise NotFound("No such member.")
    if membership.role == MembershipRole.ADMIN and len(_admins(session, group)) <= 1:
        raise Conflict("An organisation keeps at least one admin: make someone else admin first.")
    membership.removed_at = now
    session.flush()
    audit.record(
        session,
        now=now,
        actor=admin,
        action="group.member_removed",
        target=group,
        details={"member": membership.reader.email},
    )
    return membership


def set_admin(
    session: Session,
    group: Group,
    admin: Reader,
    membership_id: int,
    make_admin: bool,
    *,
    now: datetime,
) -> GroupMembership:
    """Make a member an admin, or an admin a member again (a group always keeps one admin)."""
    require_admin(session, group, admin)
    seats = _lock_seats(session, group, now)
    membership = session.get(GroupMembership, membership_id)
    if membership is None or membership.group_id != group.id or membership.removed_at is not None:
        raise NotFound("No such member.")
    role = MembershipRole.ADMIN if make_admin else MembershipRole.MEMBER
    if membership.role == role:
        return membership
    if not make_admin and len(_admins(session, group)) <= 1:
        raise Conflict("An organisation keeps at least one admin.")
    if not make_admin and not group.admins_take_seat and seats_in_use(session, group) >= seats:
        raise NoSeatsLeft("No seat is free for this admin to become a member.")
    membership.role = role
    session.flush()
    audit.record(
        session,
        now=now,
        actor=admin,
        action="group.role_changed",
        target=group,
        details={"member": membership.reader.email, "role": role.value},
    )
    return membership


def set_admins_take_seat(
    session: Session, group: Group, admin: Reader, take_seat: bool, *, now: datetime
) -> None:
    """Whether admins count against the seats; refused when the members would not fit."""
    require_admin(session, group, admin)
    seats = _lock_seats(session, group, now)
    before = group.admins_take_seat
    group.admins_take_seat = take_seat
    if take_seat and not before and seats_in_use(session, group) > seats:
        group.admins_take_seat = before
        raise NoSeatsLeft("Admins cannot take seats: there are not enough free seats.")
    audit.record(
        session,
        now=now,
        actor=admin,
        action="group.admins_take_seat",
        target=group,
        details={"take_seat": take_seat},
    )


# --- seat count ---------------------------------------------------------------------------------


PRORATION_DATE_MAX_AGE = timedelta(hours=1)
"""How long a seat-change price shown to an admin may be confirmed at that price."""


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
    with _talking_to_stripe():
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
) -> Subscription:
    """Change the number of seats (Stripe prorates onto the next invoice, at ``proration_date``
    when a price was shown for it); never fewer than the seats in use.

    A ``proration_date`` older than :data:`PRORATION_DATE_MAX_AGE`, before the paid period or
    later than now is refused (field ``seats``): the price shown must be asked for again.
    """
    require_admin(session, group, admin)
    seats = _lock_seats(session, group, now)
    subscription = current_subscription(session, group, now)
    if subscription is None:
        raise NotFound("This organisation has no running subscription.")
    _checked_seat_count(session, group, new_seats, rules=rules)
    if new_seats == seats:
        return subscription
    latest = _proration_moment(subscription, now)
    earliest = max(latest - PRORATION_DATE_MAX_AGE, subscription.current_period_start)
    if proration_date is not None and not earliest <= proration_date <= latest:
        raise ValidationFailed(
            "The price shown is out of date: look at the price difference again.", field="seats"
        )
    with _talking_to_stripe():
        changed = gateway.change_quantity(
            subscription.stripe_id, new_seats, proration_date=proration_date
        )
        subscription = _sync_after_change(session, gateway, changed, now=now)
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
    _lock_seats(session, group, now)
    subscription = current_subscription(session, group, now)
    if subscription is None:
        raise NotFound("This organisation has no running subscription.")
    if subscription.cancel_at_period_end != renew:
        return subscription
    with _talking_to_stripe():
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
    recipients = [group.billing_email, *(m.reader.email for m in _admins(session, group))]
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


# --- invites ------------------------------------------------------------------------------------


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _new_token(secret_keys: Sequence[str], invite: GroupInvite, now: datetime) -> str:
    token = _dumps(secret_keys, INVITE_SALT, {"i": invite.public_id, "e": invite.email}, now)
    invite.token_hash = _token_hash(token)
    invite.sent_at = now
    return token


def invite(
    session: Session,
    group: Group,
    admin: Reader,
    addresses: str,
    *,
    secret_keys: Sequence[str],
    base_url: str,
    rules: GroupRules,
    now: datetime,
) -> InviteReport:
    """Invite every address in ``addresses`` (separated by commas, semicolons, spaces or lines).

    Each is validated and reported back: invalid ones, current members, addresses already invited
    and those beyond the free seats (members plus pending invites never exceed the seats) are
    refused with the reason; the others get a mail with their link.
    """
    require_admin(session, group, admin)
    seats = _lock_seats(session, group, now)
    if seats == 0:
        raise Conflict("This organisation has no running subscription yet.")
    report = InviteReport()
    raw = [a for a in re.split(r"[\s,;]+", addresses or "") if a]
    if not raw:
        raise ValidationFailed("Enter at least one e-mail address.", field="emails")
    if len(raw) > MAX_INVITES_AT_ONCE:
        raise ValidationFailed(
            f"Invite at most {MAX_INVITES_AT_ONCE} addresses at once.", field="emails"
        )
    pending = {i.email for i in pending_invites(session, group, now)}
    current = {m.reader.email for m in members(session, group)}
    free = seats - seats_in_use(session, group) - len(pending)
    for address in dict.fromkeys(raw):
        try:
            email = normalise_email(address, field="emails")
        except ValidationFailed:
            report.refused.append((address, "not a valid e-mail address"))
            continue
        if email in current:
            report.refused.append((email, "already a member"))
        elif email in pending:
            report.refused.append((email, "already invited (resend it from the list)"))
        elif free <= 0:
            report.refused.append((email, "no seats left"))
        else:
            _send_invite(session, group, admin, email, secret_keys, base_url, rules, now)
            pending.add(email)
            free -= 1
            report.sent.append(email)
    audit.record(
        session,
        now=now,
        actor=admin,
        action="group.invited",
        target=group,
        details={"sent": report.sent, "refused": [a for a, _ in report.refused]},
    )
    return report


def _send_invite(
    session: Session,
    group: Group,
    admin: Reader,
    email: str,
    secret_keys: Sequence[str],
    base_url: str,
    rules: GroupRules,
    now: datetime,
) -> GroupInvite:
    entry = GroupInvite(
        group_id=group.id,
        email=email,
        invited_by_id=admin.id,
        created_at=now,
        expires_at=now + timedelta(days=rules.invite_days),
    )
    session.add(entry)
    session.flush()
    _mail_invite(session, group, admin, entry, secret_keys, base_url, now)
    return entry


def _mail_invite(
    session: Session,
    group: Group,
    admin: Reader,
    entry: GroupInvite,
    secret_keys: Sequence[str],
    base_url: str,
    now: datetime,
) -> None:
    token = _new_token(secret_keys, entry, now)
    session.flush()
    mail.send(
        session,
        entry.email,
        "group_invite",
        key=f"group-invite-{entry.public_id}-{entry.token_hash}",
        group=group,
        inviter=admin.name or admin.email,
        link=f"{base_url}/join/{token}",
        expires_at=entry.expires_at,
    )


def resend_invite(
    session: Session,
    group: Group,
    admin: Reader,
    invite_public_id: str,
    *,
    secret_keys: Sequence[str],
    base_url: str,
    rules: GroupRules,
    now: datetime,
) -> GroupInvite:
    """Mail a pending invitation again with a new link (the old link stops working); the
    invitation runs for ``rules.invite_days`` from now."""
    require_admin(session, group, admin)
    entry = _invite_of(session, group, invite_public_id)
    if entry.accepted_at is not None or entry.revoked_at is not None:
        raise Conflict("This invitation was already accepted or revoked.")
    entry.expires_at = now + timedelta(days=rules.invite_days)
    _mail_invite(session, group, admin, entry, secret_keys, base_url, now)
    return entry


def revoke_invite(
    session: Session, group: Group, admin: Reader, invite_public_id: str, *, now: datetime
) -> GroupInvite:
    """Withdraw a pending invitation: its link shows that it was revoked."""
    require_admin(session, group, admin)
    entry = _invite_of(session, group, invite_public_id)
    if entry.accepted_at is not None:
        raise Conflict("This invitation was already accepted: remove the member instead.")
    entry.revoked_at = entry.revoked_at or now
    audit.record(
        session,
        now=now,
        actor=admin,
        action="group.invite_revoked",
        target=group,
        details={"email": entry.email},
    )
    return entry


def _invite_of(session: Session, group: Group, invite_public_id: str) -> GroupInvite:
    entry = session.scalar(
        select(GroupInvite).where(
            GroupInvite.public_id == invite_public_id, GroupInvite.group_id == group.id
        )
    )
    if entry is None:
        raise NotFound("No such invitation.")
    return entry


def invite_for_token(
    session: Session, secret_keys: Sequence[str], token: str, *, now: datetime, rules: GroupRules
) -> GroupInvite:
    """The pending invitation a link token names; :class:`InvalidInvite` saying why not."""
    try:
        _loads(secret_keys, INVITE_SALT, token, now, rules.invite_days * 86400)
    except InvalidLink as exc:
        expired = "expired" in exc.message
        raise InvalidInvite(
            "This invitation has expired: ask your organisation's admin for a new one."
            if expired
            else "This invitation link is not valid."
        ) from exc
    entry = session.scalar(select(GroupInvite).where(GroupInvite.token_hash == _token_hash(token)))
    if entry is None:
        raise InvalidInvite("This invitation link was replaced by a newer one, or is not valid.")
    if entry.revoked_at is not None:
        raise InvalidInvite("This invitation was withdrawn by the organisation's admin.")
    if entry.accepted_at is not None:
        raise InvalidInvite("This invitation was already used.")
    if now >= entry.expires_at:
        raise InvalidInvite(
            "This invitation has expired: ask your organisation's admin for a new one."
        )
    return entry


def accept_invite(
    session: Session,
    reader: Reader,
    secret_keys: Sequence[str],
    token: str,
    *,
    rules: GroupRules,
    now: datetime,
) -> GroupMembership:
    """Take the seat an invitation offers; only the invited (verified) address may."""
    entry = invite_for_token(session, secret_keys, token, now=now, rules=rules)
    if not reader.is_verified:
        raise EmailNotVerified("Please verify your e-mail address first: we sent you a link.")
    if reader.email != entry.email:
        raise InvalidInvite(
            "This invitation is for another address. Log in as the invited address to accept it."
        )
    group = session.get(Group, entry.group_id)
    assert group is not None
    # Lock before marking the invite used, so two tabs accepting it queue up here.
    _lock_seats(session, group, now)
    session.refresh(entry)
    if entry.accepted_at is not None:
        raise InvalidInvite("This invitation was already used.")
    membership = claim_seat(session, group, reader, now=now)
    entry.accepted_at, entry.accepted_by_id = now, reader.id
    return membership


# --- domains ------------------------------------------------------------------------------------


def clean_domain(text: str) -> str:
    """``text`` as a lower-case domain name; refuses malformed ones and public webmail."""
    value = (text or "").strip().lower().removeprefix("@").rstrip(".")
    try:
        value = value.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise ValidationFailed("This is not a domain name.", field="domain") from exc
    if not _DOMAIN.fullmatch(value):
        raise ValidationFailed("This is not a domain name such as example.org.", field="domain")
    if value in WEBMAIL_DOMAINS:
        raise ValidationFailed(
            "Public webmail domains cannot be allowed: anyone can have an address there.",
            field="domain",
        )
    return value


def add_domain(
    session: Session, group: Group, admin: Reader, text: str, *, now: datetime
) -> GroupDomain:
    """Ask for ``text`` to be allowed; it takes effect when staff approve it."""
    require_admin(session, group, admin)
    domain = clean_domain(text)
    taken = session.scalar(select(GroupDomain).where(GroupDomain.domain == domain))
    if taken is not None:
        raise Conflict(
            "This domain is already registered"
            + (
                " for your organisation."
                if taken.group_id == group.id
                else " by another organisation."
            ),
            field="domain",
        )
    entry = GroupDomain(group_id=group.id, domain=domain, created_at=now)
    try:
        with session.begin_nested():
            session.add(entry)
    except IntegrityError as exc:
        raise Conflict("This domain is already registered.", field="domain") from exc
    audit.record(
        session,
        now=now,
        actor=admin,
        action="group.domain_added",
        target=group,
        details={"domain": domain},
    )
    return entry


def remove_domain(
    session: Session, group: Group, admin: Reader, domain_id: int, *, now: datetime
) -> None:
    """Stop allowing a domain (members who joined by it keep their seat)."""
    require_admin(session, group, admin)
    entry = session.get(GroupDomain, domain_id)
    if entry is None or entry.group_id != group.id:
        raise NotFound("No such domain.")
    session.delete(entry)
    audit.record(
        session,
        now=now,
        actor=admin,
        action="group.domain_removed",
        target=group,
        details={"domain": entry.domain},
    )


def joinable_groups(session: Session, reader: Reader) -> list[Group]:
    """Groups whose approved domain is exactly the verified reader's e-mail domain."""
    if not reader.is_verified:
        return []
    domain = reader.email.rpartition("@")[2]
    return list(
        session.scalars(
            select(Group)
            .join(GroupDomain, GroupDomain.group_id == Group.id)
            .where(GroupDomain.domain == domain, GroupDomain.approved_at.is_not(None))
        )
    )


def join_by_domain(
    session: Session, reader: Reader, group_public_id: str, *, now: datetime
) -> GroupMembership:
    """Take a seat in a group that allows the reader's e-mail domain, while seats are free."""
    group = next(
        (g for g in joinable_groups(session, reader) if g.public_id == group_public_id), None
    )
    if group is None:
        raise NotFound("Your e-mail address gives you no seat in this organisation.")
    return claim_seat(session, group, reader, now=now)


# --- office networks ----------------------------------------------------------------------------


def add_ip_range(
    session: Session,
    group: Group,
    admin: Reader,
    text: str,
    *,
    label: str = "",
    rules: GroupRules,
    now: datetime,
) -> GroupIPRange:
    """Register an office network; it takes effect when staff approve it.

    Refused when it overlaps any registered range (this group's or another's): checked here in
    the transaction, and on PostgreSQL by the exclusion constraint, which no race can pass.
    """
    require_admin(session, group, admin)
    network = parse_network(text, rules.networks)
    return _insert_range(session, group, network, label, now, admin)


def _insert_range(
    session: Session,
    group: Group,
    network: ipaddress.IPv4Network | ipaddress.IPv6Network,
    label: str,
    now: datetime,
    actor: Reader | str,
    *,
    private_allowed: bool = False,
) -> GroupIPRange:
    first, last = bounds(network)
    clash = session.scalar(
        select(GroupIPRange).where(
            GroupIPRange.version == network.version,
            GroupIPRange.first_address <= last,
            GroupIPRange.last_address >= first,
        )
    )
    if clash is not None:
        raise _overlap(clash.group_id == group.id)
    entry = GroupIPRange(
        group_id=group.id,
        cidr=network.compressed,
        label=" ".join((label or "").split())[:200] or None,
        created_at=now,
        version=network.version,
        first_address=first,
        last_address=last,
        private_allowed=private_allowed,
    )
    try:
        with session.begin_nested():
            session.add(entry)
    except IntegrityError as exc:
        raise _overlap(False) from exc
    except OperationalError as exc:
        # Two transactions inserting overlapping rows at once wait on each other's exclusion
        # check; PostgreSQL aborts one of them: that one overlaps the other.
        if getattr(exc.orig, "sqlstate", None) != "40P01":
            raise
        raise _overlap(False) from exc
    audit.record(
        session,
        now=now,
        actor=actor,
        action="group.ip_range_added",
        target=group,
        details={"cidr": entry.cidr},
    )
    return entry


def _overlap(own: bool) -> Conflict:
    whose = (
        "one of your organisation's ranges" if own else "a range registered by another organisation"
    )
    return Conflict(f"This range overlaps {whose}.", field="cidr", code="ip_range_overlap")


def remove_ip_range(
    session: Session, group: Group, admin: Reader, range_id: int, *, now: datetime
) -> None:
    """Unregister an office network (its visitors lose access at once)."""
    require_admin(session, group, admin)
    entry = session.get(GroupIPRange, range_id)
    if entry is None or entry.group_id != group.id:
        raise NotFound("No such range.")
    session.delete(entry)
    audit.record(
        session,
        now=now,
        actor=admin,
        action="group.ip_range_removed",
        target=group,
        details={"cidr": entry.cidr},
    )


# --- staff --------------------------------------------------------------------------------------


def pending_approvals(session: Session) -> tuple[list[GroupDomain], list[GroupIPRange]]:
    """Domains and office ranges waiting for staff, oldest first."""
    domains = session.scalars(
        select(GroupDomain)
        .where(GroupDomain.approved_at.is_(None))
        .order_by(GroupDomain.created_at)
    )
    ranges = session.scalars(
        select(GroupIPRange)
        .where(GroupIPRange.approved_at.is_(None))
        .order_by(GroupIPRange.created_at)
    )
    return list(domains), list(ranges)


def decide_domain(
    session: Session, staff: Reader, domain_id: int, approve: bool, *, now: datetime
) -> GroupDomain:
    """Approve a domain claim (it takes effect), or refuse it (it is deleted)."""
    entry = session.get(GroupDomain, domain_id)
    if entry is None:
        raise NotFound("No such domain.")
    _decide_claim(session, staff, entry, approve, "domain", {"domain": entry.domain}, now=now)
    return entry


def decide_ip_range(
    session: Session, staff: Reader, range_id: int, approve: bool, *, now: datetime
) -> GroupIPRange:
    """Approve an office range (its visitors read as the group), or refuse it (deleted)."""
    entry = session.get(GroupIPRange, range_id)
    if entry is None:
        raise NotFound("No such range.")
    _decide_claim(session, staff, entry, approve, "ip_range", {"cidr": entry.cidr}, now=now)
    return entry


def _decide_claim(
    session: Session,
    staff: Reader,
    entry: GroupDomain | GroupIPRange,
    approve: bool,
    kind: str,
    details: dict[str, Any],
    *,
    now: datetime,
) -> None:
    """Staff's decision on a group's claim, audit-logged: approved (kept, dated) or refused
    (deleted)."""
    audit.record(
        session,
        now=now,
        actor=staff,
        action=f"group.{kind}_" + ("approved" if approve else "refused"),
        target=entry.group,
        details=details,
    )
    if approve:
        entry.approved_at, entry.approved_by_id = entry.approved_at or now, staff.id
    else:
        session.delete(entry)


def staff_add_private_range(
    session: Session,
    staff: Reader,
    group: Group,
    text: str,
    *,
    label: str,
    rules: GroupRules,
    now: datetime,
) -> GroupIPRange:
    """Staff register (and approve) a range, private and reserved ones allowed."""
    network = parse_network(text, rules.networks, allow_private=True)
    entry = _insert_range(session, group, network, label, now, staff, private_allowed=True)
    entry.approved_at, entry.approved_by_id = now, staff.id
    return entry


def simulate_bank_transfer(
    session: Session, gateway: StripeGateway, group: Group, *, now: datetime
) -> int:
    """Development and tests: the transfers paying the group's open invoices arrive at the
    stand-in (each with the invoice as reference); the invoices are mirrored. How many were paid."""
    customer = _customer(session, group)
    paid = 0
    with _talking_to_stripe():
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


# --- idle seats ---------------------------------------------------------------------------------


def idle_members(
    session: Session, group: Group, *, rules: GroupRules, now: datetime
) -> list[GroupMembership]:
    """Members (not admins, the group's anchors) who have not read through the group for
    ``rules.idle_days`` days (counting from joining when they never did)."""
    cutoff = now - timedelta(days=rules.idle_days)
    return [
        m
        for m in members(session, group)
        if m.role == MembershipRole.MEMBER and (m.last_read_at or m.joined_at) <= cutoff
    ]


def reclaim_idle_seat(
    session: Session,
    group: Group,
    admin: Reader,
    membership_id: int,
    *,
    rules: GroupRules,
    now: datetime,
) -> GroupMembership:
    """Free an idle member's seat in one click, telling the member."""
    if membership_id not in {m.id for m in idle_members(session, group, rules=rules, now=now)}:
        raise Conflict("This seat is not idle.")
    membership = remove_member(session, group, admin, membership_id, now=now)
    mail.send(
        session,
        membership.reader.email,
        "group_seat_reclaimed",
        key=f"group-seat-reclaimed-{membership.id}-{now.date().isoformat()}",
        group=group,
    )
    return membership


IDLE_WARNING = timedelta(days=7)
"""How long before automatic reclaiming a member is told their seat will be freed."""


def set_auto_reclaim(
    session: Session, group: Group, admin: Reader, enabled: bool, *, now: datetime
) -> None:
    """Whether ``tick`` frees idle seats itself, a week after telling the member."""
    require_admin(session, group, admin)
    group.auto_reclaim_idle = enabled
    audit.record(
        session,
        now=now,
        actor=admin,
        action="group.auto_reclaim",
        target=group,
        details={"enabled": enabled},
    )


def groups_reclaiming(session: Session) -> list[int]:
    """Ids of the groups that reclaim idle seats automatically."""
    return list(session.scalars(select(Group.id).where(Group.auto_reclaim_idle.is_(True))))


def reclaim_idle_automatically(
    session: Session, group_id: int, *, rules: GroupRules, now: datetime
) -> int:
    """For a group that asked for it: warn idle members (once), and free the seats of those who
    were warned ``IDLE_WARNING`` ago and have not read since. How many seats were freed."""
    group = session.get(Group, group_id)
    if group is None or not group.auto_reclaim_idle:
        return 0
    _lock_seats(session, group, now)
    freed = 0
    for membership in idle_members(session, group, rules=rules, now=now):
        warned = membership.idle_warned_at
        if warned is None or (membership.last_read_at or membership.joined_at) > warned:
            membership.idle_warned_at = now
            mail.send(
                session,
                membership.reader.email,
                "group_seat_idle",
                key=f"group-seat-idle-{membership.id}-{now.date().isoformat()}",
                group=group,
                frees_on=now + IDLE_WARNING,
            )
        elif now - warned >= IDLE_WARNING:
            membership.removed_at = now
            audit.record(
                session,
                now=now,
                actor="tick",
                action="group.idle_seat_reclaimed",
                target=group,
                details={"member": membership.reader.email},
            )
            mail.send(
                session,
                membership.reader.email,
                "group_seat_reclaimed",
                key=f"group-seat-reclaimed-{membership.id}-{now.date().isoformat()}",
                group=group,
            )
            freed += 1
    session.flush()
    return freed


def note_reading(
    session: Session, reader: Reader, group_public_id: str | None, *, now: datetime
) -> None:
    """Record that ``reader`` read through the group (at most once an hour, to stay cheap)."""
    if group_public_id is None:
        return
    membership = session.scalar(
        select(GroupMembership)
        .join(Group, Group.id == GroupMembership.group_id)
        .where(Group.public_id == group_public_id, GroupMembership.reader_id == reader.id)
    )
    if membership is None:
        return
    if membership.last_read_at is None or now - membership.last_read_at >= timedelta(hours=1):
        membership.last_read_at = now
