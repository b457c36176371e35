"""Enumerations of states; values are stored as strings (Stripe's own where they come from Stripe)."""

from __future__ import annotations

from enum import StrEnum


class StaffRole(StrEnum):
    """What a person may do in the staff area; ``none`` for readers."""

    NONE = "none"
    SUPPORT = "support"
    FINANCE = "finance"
    ADMIN = "admin"


class TrialStatus(StrEnum):
    """Life of the reader's card-less free trial."""

    ACTIVE = "active"
    CONVERTED = "converted"
    EXPIRED = "expired"


class SubscriptionStatus(StrEnum):
    """Stripe's subscription statuses, verbatim."""

    TRIALING = "trialing"
    ACTIVE = "active"
    PAST_DUE = "past_due"
    UNPAID = "unpaid"
    CANCELED = "canceled"
    INCOMPLETE = "incomplete"
    INCOMPLETE_EXPIRED = "incomplete_expired"
    PAUSED = "paused"


class CollectionMethod(StrEnum):
    """How Stripe collects a subscription's invoices."""

    CHARGE_AUTOMATICALLY = "charge_automatically"
    SEND_INVOICE = "send_invoice"


class PlanKind(StrEnum):
    """Who a plan is sold to."""

    INDIVIDUAL = "individual"
    GROUP = "group"


class BillingInterval(StrEnum):
    """How often a plan charges."""

    MONTH = "month"
    YEAR = "year"


class SubscriptionEventKind(StrEnum):
    """Changes of a subscription that matter to money or access (the MRR ledger's entries)."""

    CREATED = "created"
    TRIAL_STARTED = "trial_started"
    CONVERTED = "converted"
    RENEWED = "renewed"
    UPGRADED = "upgraded"
    DOWNGRADED = "downgraded"
    SEATS_CHANGED = "seats_changed"
    PAST_DUE = "past_due"
    RECOVERED = "recovered"
    CANCELLED = "cancelled"
    REACTIVATED = "reactivated"
    ENDED = "ended"
    REFUNDED = "refunded"


class MembershipRole(StrEnum):
    """A person's role in a group."""

    ADMIN = "admin"
    MEMBER = "member"


class WebhookEventStatus(StrEnum):
    """Where a received Stripe event is in its handling."""

    RECEIVED = "received"
    """Stored, waiting for a worker."""
    PROCESSED = "processed"
    FAILED = "failed"
    """The last attempt failed; the worker tries again at ``next_attempt_at``."""
    IGNORED = "ignored"
    DEAD = "dead"
    """Never tried again by itself: out of attempts, or a payload that can never be handled."""


class MailStatus(StrEnum):
    """Where a mail of the outbox is in its delivery."""

    PENDING = "pending"
    """Written with the change that causes it; the worker sends it after commit."""
    SENT = "sent"
    FAILED = "failed"
    """The last attempt failed; the worker tries again at ``next_attempt_at``."""
    DEAD = "dead"
    """Out of attempts; kept with its error and counted in ``/metrics``."""


class InvoiceStatus(StrEnum):
    """Stripe's invoice statuses, verbatim."""

    DRAFT = "draft"
    OPEN = "open"
    PAID = "paid"
    UNCOLLECTIBLE = "uncollectible"
    VOID = "void"
