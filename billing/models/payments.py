"""The mirror of Stripe: customers, subscriptions and their event ledger, invoices, refunds, disputes."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, Boolean, CheckConstraint, ForeignKey, Index, Numeric, String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from billing.models.base import Base, Currency, enum_type, public_id_column
from billing.models.enums import (
    CollectionMethod,
    InvoiceStatus,
    SubscriptionEventKind,
    SubscriptionStatus,
)

if TYPE_CHECKING:
    from billing.models.groups import Group
    from billing.models.plans import Plan
    from billing.models.readers import Reader

ENDED_STATUSES = frozenset({SubscriptionStatus.CANCELED, SubscriptionStatus.INCOMPLETE_EXPIRED})


class Customer(Base):
    """A Stripe customer of ours: one per paying reader or group."""

    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(primary_key=True)
    stripe_id: Mapped[str] = mapped_column(String(255), unique=True)
    reader_id: Mapped[int | None] = mapped_column(
        ForeignKey("readers.id", ondelete="SET NULL"), unique=True
    )
    group_id: Mapped[int | None] = mapped_column(
        ForeignKey("groups.id", ondelete="SET NULL"), unique=True
    )
    email: Mapped[str] = mapped_column(String(320))
    email_canonical: Mapped[str] = mapped_column(String(320), index=True)
    """Kept after the reader's account is deleted, so a new account gets no second trial."""
    country: Mapped[str | None] = mapped_column(String(2))
    vat_id: Mapped[str | None] = mapped_column(String(32))
    card_brand: Mapped[str | None] = mapped_column(String(32))
    card_last4: Mapped[str | None] = mapped_column(String(4))
    default_payment_method_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime]
    deleted_at: Mapped[datetime | None]
    declared_country: Mapped[str | None] = mapped_column(String(2))
    """Evidence of where the customer is: the country they gave (``country`` is the one taxed)."""
    card_country: Mapped[str | None] = mapped_column(String(2))
    """Evidence of where the customer is: their card's issuing country."""
    country_confirmed_at: Mapped[datetime | None]
    """When the reader confirmed ``country`` although the card says otherwise."""
    ip_country: Mapped[str | None] = mapped_column(String(2))
    """Supporting evidence of where the customer is: the country of the IP address they last gave
    their country or card from (GeoIP, when ``GEOIP_DATABASE`` is set; None when unknown)."""
    vies_valid: Mapped[bool | None] = mapped_column(Boolean)
    """What VIES said of ``vat_id`` (None: not asked, or no answer)."""
    vies_checked_at: Mapped[datetime | None]
    balance: Mapped[int] = mapped_column(default=0, server_default="0")
    """Stripe's customer balance in minor units (of the subscription's currency): negative is a
    credit, which pays the next invoices first."""

    @property
    def credit(self) -> int:
        """The credit the customer has on Stripe (0 when none), in minor units."""
        return max(0, -self.balance)

    reader: Mapped[Reader | None] = relationship(back_populates="customer")
    subscriptions: Mapped[list[Subscription]] = relationship(back_populates="customer")

    __table_args__ = (
        CheckConstraint("NOT (reader_id IS NOT NULL AND group_id IS NOT NULL)", name="one_owner"),
    )


class Subscription(Base):
    """A mirrored Stripe subscription, individual (``reader_id``) or group (``group_id``).

    The predicates read like English and take ``now`` so they can be asked about any moment.
    """

    __tablename__ = "subscriptions"

    id: Mapped[int] = mapped_column(primary_key=True)
    public_id: Mapped[str] = public_id_column("sub")
    stripe_id: Mapped[str] = mapped_column(String(255), unique=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    reader_id: Mapped[int | None] = mapped_column(
        ForeignKey("readers.id", ondelete="SET NULL"), index=True
    )
    group_id: Mapped[int | None] = mapped_column(
        ForeignKey("groups.id", ondelete="SET NULL"), index=True
    )
    plan_id: Mapped[int] = mapped_column(ForeignKey("plans.id"))
    status: Mapped[SubscriptionStatus] = mapped_column(
        enum_type(SubscriptionStatus, "subscription_status")
    )
    quantity: Mapped[int] = mapped_column(default=1)
    current_period_start: Mapped[datetime]
    current_period_end: Mapped[datetime]
    cancel_at_period_end: Mapped[bool] = mapped_column(Boolean, default=False)
    canceled_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    trial_end: Mapped[datetime | None]
    past_due_since: Mapped[datetime | None]
    collection_method: Mapped[CollectionMethod] = mapped_column(
        enum_type(CollectionMethod, "collection_method"),
        default=CollectionMethod.CHARGE_AUTOMATICALLY,
    )
    last_stripe_event_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    tax_rate_id: Mapped[int | None] = mapped_column(ForeignKey("tax_rates.id"))
    """The Tax Rate set on Stripe as the subscription's ``default_tax_rates`` (next invoices)."""
    renewal_notice_for: Mapped[datetime | None]
    """The period end whose renewal notice was mailed (one notice per renewal)."""

    customer: Mapped[Customer] = relationship(back_populates="subscriptions")
    plan: Mapped[Plan] = relationship()
    reader: Mapped[Reader | None] = relationship(foreign_keys=[reader_id])
    group: Mapped[Group | None] = relationship(foreign_keys=[group_id])

    __table_args__ = (
        CheckConstraint("quantity >= 1", name="quantity_positive"),
        CheckConstraint("NOT (reader_id IS NOT NULL AND group_id IS NOT NULL)", name="one_owner"),
        CheckConstraint("current_period_end >= current_period_start", name="period_ordered"),
    )

    def is_on_trial(self, now: datetime) -> bool:
        """Stripe-side trial still running (``trialing`` with a trial end in the future)."""
        return (
            self.status == SubscriptionStatus.TRIALING
            and self.trial_end is not None
            and now < self.trial_end
        )

    def is_on_grace_period(self, now: datetime) -> bool:
        """Cancelled at period end but paid until then, and that end has not come yet."""
        return (
            self.cancel_at_period_end
            and self.status in (SubscriptionStatus.ACTIVE, SubscriptionStatus.TRIALING)
            and now < self.current_period_end
        )

    def past_due_grace_ends(self, grace: timedelta) -> datetime | None:
        """When access stops if a failing payment is not fixed (None unless past due)."""
        if self.status != SubscriptionStatus.PAST_DUE:
            return None
        return (self.past_due_since or self.current_period_start) + grace

    def is_past_due_within_grace(self, now: datetime, grace: timedelta) -> bool:
        """A payment is failing, and the dunning grace that started when it first failed runs on."""
        ends = self.past_due_grace_ends(grace)
        return ends is not None and now < ends

    def has_ended(self, now: datetime) -> bool:
        """Over for good: cancelled, expired before first payment, or past its end time."""
        if self.status in ENDED_STATUSES:
            return True
        return self.ended_at is not None and self.ended_at <= now

    def is_active(self, now: datetime) -> bool:
        """Paid and running, not merely in a grace of some kind."""
        return (
            self.status == SubscriptionStatus.ACTIVE
            and not self.cancel_at_period_end
            and not self.has_ended(now)
        )

    def is_valid(self, now: datetime, grace: timedelta) -> bool:
        """Gives access: active, on trial, on a grace period, or past due within the grace."""
        if self.has_ended(now):
            return False
        return (
            self.is_active(now)
            or self.is_on_trial(now)
            or self.is_on_grace_period(now)
            or self.is_past_due_within_grace(now, grace)
        )

    def monthly_revenue(self) -> int:
        """What this subscription adds to MRR right now, in minor units of the plan's currency."""
        if self.status in ENDED_STATUSES or self.status in (
            SubscriptionStatus.INCOMPLETE,
            SubscriptionStatus.TRIALING,
        ):
            return 0
        return self.plan.monthly_amount(self.quantity)


class SubscriptionEvent(Base):
    """Append-only ledger of what happened to a subscription, with its effect on MRR."""

    __tablename__ = "subscription_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    subscription_id: Mapped[int] = mapped_column(ForeignKey("subscriptions.id"), index=True)
    kind: Mapped[SubscriptionEventKind] = mapped_column(
        enum_type(SubscriptionEventKind, "subscription_event_kind")
    )
    occurred_at: Mapped[datetime] = mapped_column(index=True)
    currency: Mapped[str] = mapped_column(Currency)
    mrr_before: Mapped[int]
    mrr_after: Mapped[int]
    mrr_delta: Mapped[int]
    stripe_event_id: Mapped[str | None] = mapped_column(String(255))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    __table_args__ = (
        CheckConstraint("mrr_delta = mrr_after - mrr_before", name="delta_consistent"),
        CheckConstraint("mrr_before >= 0 AND mrr_after >= 0", name="mrr_not_negative"),
    )


class Invoice(Base):
    """A mirrored Stripe invoice, with what the VAT and revenue reports need."""

    __tablename__ = "invoices"

    id: Mapped[int] = mapped_column(primary_key=True)
    stripe_id: Mapped[str] = mapped_column(String(255), unique=True)
    number: Mapped[str | None] = mapped_column(String(64))
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    subscription_id: Mapped[int | None] = mapped_column(ForeignKey("subscriptions.id"), index=True)
    status: Mapped[InvoiceStatus] = mapped_column(enum_type(InvoiceStatus, "invoice_status"))
    currency: Mapped[str] = mapped_column(Currency)
    subtotal: Mapped[int]
    tax: Mapped[int] = mapped_column(default=0)
    """The VAT inside ``total``; negative on a credit (an invoice whose lines add up below zero)."""
    total: Mapped[int]
    amount_paid: Mapped[int] = mapped_column(default=0)
    amount_refunded: Mapped[int] = mapped_column(default=0)
    customer_country: Mapped[str | None] = mapped_column(String(2))
    customer_vat_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(index=True)
    paid_at: Mapped[datetime | None]
    hosted_invoice_url: Mapped[str | None] = mapped_column(String(1000))
    invoice_pdf_url: Mapped[str | None] = mapped_column(String(1000))
    net: Mapped[int] = mapped_column(default=0, server_default="0")
    """``total - tax``: the amount without VAT."""
    tax_rate: Mapped[Decimal | None] = mapped_column(Numeric(7, 4))
    """The VAT percentage the invoice was taxed at (0 for reverse charge)."""
    tax_country: Mapped[str | None] = mapped_column(String(2))
    """The member state the VAT is owed to (the customer's, or the publisher's for domestic sales)."""
    tax_kind: Mapped[str | None] = mapped_column(String(16))
    """``domestic``, ``oss``, ``reverse_charge`` or ``outside_eu`` (:class:`billing.services.vat.TaxKind`)."""
    reverse_charge: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    tax_evidence: Mapped[dict[str, Any] | None] = mapped_column(
        JSON().with_variant(JSONB(), "postgresql")
    )
    """The country evidence when the invoice was mirrored: declared and card country, whether they
    agree and whether the reader confirmed. ``jsonb`` on PostgreSQL, so the invoices report reads
    its members without parsing the text again for each one."""

    __table_args__ = (
        CheckConstraint("amount_paid >= 0", name="paid_not_negative"),
        CheckConstraint(
            "amount_refunded >= 0 AND amount_refunded <= amount_paid", name="refund_within_paid"
        ),
    )


class Refund(Base):
    """Money given back against an invoice's charge."""

    __tablename__ = "refunds"

    id: Mapped[int] = mapped_column(primary_key=True)
    stripe_id: Mapped[str] = mapped_column(String(255), unique=True)
    invoice_id: Mapped[int | None] = mapped_column(ForeignKey("invoices.id"), index=True)
    stripe_charge_id: Mapped[str | None] = mapped_column(String(255))
    amount: Mapped[int]
    currency: Mapped[str] = mapped_column(Currency)
    status: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime]
    tax: Mapped[int] = mapped_column(default=0, server_default="0")
    """The VAT given back with the refund, at its invoice's rate; dated at the refund."""

    __table_args__ = (CheckConstraint("amount > 0", name="amount_positive"),)


class Dispute(Base):
    """A chargeback opened by the cardholder's bank against an invoice's charge."""

    __tablename__ = "disputes"

    id: Mapped[int] = mapped_column(primary_key=True)
    stripe_id: Mapped[str] = mapped_column(String(255), unique=True)
    invoice_id: Mapped[int | None] = mapped_column(ForeignKey("invoices.id"), index=True)
    stripe_charge_id: Mapped[str | None] = mapped_column(String(255))
    amount: Mapped[int]
    currency: Mapped[str] = mapped_column(Currency)
    status: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime]
    closed_at: Mapped[datetime | None]

    __table_args__ = (CheckConstraint("amount > 0", name="amount_positive"),)


Index("ix_subscriptions_status", Subscription.status)


class ScheduledSubscription(Base):
    """A subscription the reader chose during their free trial, started when the trial ends.

    The card is saved with Stripe at once; ``flask billing tick`` creates the Stripe subscription at
    ``starts_at``, so nobody is charged before the free days they were promised are over.
    """

    __tablename__ = "scheduled_subscriptions"

    id: Mapped[int] = mapped_column(primary_key=True)
    reader_id: Mapped[int | None] = mapped_column(
        ForeignKey("readers.id", ondelete="CASCADE"), unique=True
    )
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"))
    plan_id: Mapped[int] = mapped_column(ForeignKey("plans.id"))
    starts_at: Mapped[datetime] = mapped_column(index=True)
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    subscription_id: Mapped[int | None] = mapped_column(ForeignKey("subscriptions.id"))
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(String(1000))

    customer: Mapped[Customer] = relationship()
    plan: Mapped[Plan] = relationship()
